"""pcap and pcapng records, read in chunks from a file or a stream: the container layer of a capture.

:func:`read_records` walks the records of a capture and yields them in batches
(:class:`RecordBatch`): each packet's captured bytes (offsets into the batch's buffer), its
captured and original lengths, its link type and its time in whole microseconds. Nothing above this
module knows whether the capture was pcap or pcapng.

- **pcap**: microsecond and nanosecond magics, either byte order. The link-type field of the file
  header is masked to its low 16 bits: the upper bits carry the FCS length (``0x30000001`` is
  Ethernet whose frames end in a 4-byte FCS), recorded per packet as ``fcs_bytes``.
- **pcapng**: every section (each with its own byte order) and, per interface description block,
  its own link type, ``if_tsresol`` (``10^-k`` or ``2^-k`` seconds; default microseconds),
  ``if_tsoffset`` (seconds added to every time) and ``if_fcslen``. Enhanced, simple and (obsolete)
  packet blocks are packets; other blocks are skipped. Files merged with ``mergecap`` mix
  interfaces, which is why none of this is read once per file.
- **Times stay exact integers** until they become microseconds, and are rounded half up there,
  never truncated: ``round(sec * 10^6 + frac / units_per_second * 10^6)``.

Why not dpkt or scapy here: dpkt reads a pcapng file with its first interface's link type and time
resolution (packets of a second interface come out 1000x late or as "not IP"), and both build one
Python object per packet. Walking the record headers in Python and leaving every per-packet field
to numpy (:mod:`fedaux.data.packet_decode`) is what makes capture reading faster than NFStream's C
flow meter (``benchmarks/bench_capture.py``).

Memory is one chunk (:data:`CHUNK_BYTES`) plus the record being completed, whatever the size of the
capture, and a stream (``tcpdump -w -``) yields its records as they arrive.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from fedaux.data.reader import FlowFormatError

# pcap magic: (byte order, units of the fraction field per second): microseconds or nanoseconds.
PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1": ("<", 1_000_000), b"\xa1\xb2\xc3\xd4": (">", 1_000_000),
               b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000), b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000)}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
CHUNK_BYTES = 8 << 20
# A record claiming more bytes than this is a damaged file, not a packet (pcapng's 256 KiB jumbo
# frames and pcap's 262,144-byte default snap length both fit).
MAX_RECORD_BYTES = 1 << 20
_EPB, _SPB, _PB, _IDB, _SHB = 6, 3, 2, 1, 0x0A0D0D0A


@dataclass
class RecordBatch:
    """Packets read from one chunk of a capture.

    Attributes:
        buffer: ``(B,)`` uint8, the chunk's bytes followed by zero padding, so that a fixed-size
            read at a packet's start never leaves the array (lengths are checked against
            ``caplen`` before use).
        start: ``(N,)`` int64 offset of each packet's first captured byte in ``buffer``.
        caplen: ``(N,)`` int64 bytes captured; ``wirelen``: ``(N,)`` int64 bytes on the wire.
        linktype: ``(N,)`` int64 link type of each packet's interface (low 16 bits only).
        fcs_bytes: ``(N,)`` int64 FCS bytes at the end of each frame (from the link-type field or
            ``if_fcslen``), so a packet's bytes can be measured without them.
        time_us: ``(N,)`` int64 unix microseconds.
        first_number: the 1-based number of the batch's first packet in the capture.
        file_offset: the capture's byte offset of ``buffer[0]`` (``start + file_offset`` are file offsets).
    """

    buffer: np.ndarray
    start: np.ndarray
    caplen: np.ndarray
    wirelen: np.ndarray
    linktype: np.ndarray
    fcs_bytes: np.ndarray
    time_us: np.ndarray
    first_number: int = 1
    file_offset: int = 0

    def __len__(self) -> int:
        return len(self.start)


PADDING = 128  # >= the furthest fixed offset the decoders read past a packet's start


@dataclass
class _Interface:
    linktype: int
    units_per_second: int = 1_000_000
    offset_s: int = 0
    fcs_bytes: int = 0


def capture_format(head: bytes) -> str | None:
    """``"pcap"``, ``"pcapng"`` or None, from a capture's first four bytes."""
    return "pcap" if head[:4] in PCAP_MAGICS else "pcapng" if head[:4] == PCAPNG_MAGIC else None


def _micros(stamp: np.ndarray, units_per_second: int, offset_s: int) -> np.ndarray:
    """Raw times in ``units_per_second`` as unix microseconds, rounded half up, exactly."""
    if units_per_second == 1_000_000:
        return stamp + offset_s * 1_000_000
    whole, frac = np.divmod(stamp, units_per_second)
    if units_per_second <= 1 << 43:  # frac * 10^6 stays inside int64
        micros = (frac * 1_000_000 + units_per_second // 2) // units_per_second
    else:  # finer than 2^-43 s: Python integers
        micros = np.array([(int(f) * 1_000_000 + units_per_second // 2) // units_per_second for f in frac],
                          dtype=np.int64)
    return (whole + offset_s) * 1_000_000 + micros


class _Stream:
    """Bytes of a capture, read in chunks; ``data[pos:]`` is what has not been consumed yet."""

    def __init__(self, handle: BinaryIO, name: str) -> None:
        self.handle, self.name = handle, name
        self.data, self.pos, self.consumed, self.eof = b"", 0, 0, False
        self._read = getattr(handle, "read1", handle.read)  # read1: a pipe gives what it has, without waiting

    def fill(self, need: int) -> bool:
        """Read until ``need`` unconsumed bytes are held; False at end of stream with fewer."""
        while len(self.data) - self.pos < need and not self.eof:
            chunk = self._read(max(CHUNK_BYTES, need))
            if not chunk:
                self.eof = True
                break
            self.consumed += self.pos
            self.data = self.data[self.pos:] + chunk
            self.pos = 0
        return len(self.data) - self.pos >= need

    def more(self) -> bool:
        """Read one more chunk, keeping what is unconsumed; False at end of stream."""
        return self.fill(len(self.data) - self.pos + 1)

    @property
    def offset(self) -> int:
        """File offset of ``data[pos]``."""
        return self.consumed + self.pos


def read_records(handle: BinaryIO, name: str) -> Iterator[RecordBatch]:
    """The packets of a pcap or pcapng capture read from ``handle``, in file order, in batches.

    Raises:
        FlowFormatError: not a capture, a damaged or truncated record (named by packet number and
            byte offset), a packet of an interface that was never described, an unknown time
            resolution.
    """
    stream = _Stream(handle, name)
    stream.fill(4)
    kind = capture_format(stream.data[:4])
    if kind is None:
        raise FlowFormatError(f"{name}: not a pcap or pcapng capture (first bytes {stream.data[:4].hex() or 'none'})")
    yield from (_pcap_records(stream) if kind == "pcap" else _pcapng_records(stream))


def _header_words(data: bytes, at: np.ndarray, words: int, order: str) -> np.ndarray:
    """``(len(at), words)`` int64: the 32-bit words at each offset of ``at`` in ``data``."""
    raw = np.frombuffer(data, dtype=np.uint8)[at[:, None] + np.arange(4 * words)]
    return np.ascontiguousarray(raw).view(order + "u4").astype(np.int64)


def _batch(stream: _Stream, start: np.ndarray, caplen: np.ndarray, wirelen: np.ndarray, interface: np.ndarray,
           stamp: np.ndarray, interfaces: list[_Interface], number: int) -> RecordBatch:
    """A batch of the packets at ``start`` in the current chunk, times in µs from each interface's clock."""
    time_us = np.empty(len(stamp), dtype=np.int64)
    linktype, fcs = np.empty_like(time_us), np.empty_like(time_us)
    for k in np.unique(interface).tolist():
        if k >= len(interfaces):
            raise FlowFormatError(f"{stream.name}: packet {number + int(np.argmax(interface == k))} names interface "
                                  f"{k}, but only {len(interfaces)} interface(s) are described before it")
        mine = interface == k
        face = interfaces[k]
        time_us[mine] = _micros(stamp[mine], face.units_per_second, face.offset_s)
        linktype[mine], fcs[mine] = face.linktype, face.fcs_bytes
    buffer = np.frombuffer(stream.data + bytes(PADDING), dtype=np.uint8)
    return RecordBatch(buffer, start, caplen, wirelen, linktype, fcs, time_us, number, stream.consumed)


def _pcap_records(stream: _Stream) -> Iterator[RecordBatch]:
    if not stream.fill(24):
        raise FlowFormatError(f"{stream.name}: truncated pcap header ({len(stream.data)} of its 24 bytes)")
    order, units = PCAP_MAGICS[stream.data[:4]]
    field_ = struct.unpack_from(order + "I", stream.data, 20)[0]
    # The upper bits of the link-type field: bit 28 says an FCS length follows in bits 29-31 (16-bit words).
    fcs_bytes = 2 * (field_ >> 29) if field_ & 0x10000000 else 0
    interfaces = [_Interface(field_ & 0xFFFF, units, 0, fcs_bytes)]
    stream.pos = 24
    caplen_at = struct.Struct(order + "I").unpack_from
    number = 1
    while True:
        # The walk needs only each record's captured length; every other field is read by numpy after.
        starts: list[int] = []
        append = starts.append
        data, pos, end = stream.data, stream.pos, len(stream.data)
        while pos + 16 <= end:
            caplen = caplen_at(data, pos + 8)[0]
            if caplen > MAX_RECORD_BYTES:
                raise FlowFormatError(f"{stream.name}: damaged capture: packet {number + len(starts)} at byte "
                                      f"{stream.consumed + pos} claims {caplen:,} captured bytes (at most "
                                      f"{MAX_RECORD_BYTES:,})")
            following = pos + 16 + caplen
            if following > end:
                break
            append(pos + 16)
            pos = following
        stream.pos = pos
        if starts:
            start = np.asarray(starts, dtype=np.int64)
            seconds, fraction, caplens, wirelens = _header_words(data, start - 16, 4, order).T
            yield _batch(stream, start, caplens, wirelens, np.zeros(len(start), dtype=np.int64),
                         seconds * units + fraction, interfaces, number)
            number += len(starts)
        if not stream.more():
            break
    left = len(stream.data) - stream.pos
    if left:
        promised = caplen_at(stream.data, stream.pos + 8)[0] if left >= 12 else None
        what = f"{left - 16} of its {promised} bytes" if promised is not None and left >= 16 else f"{left} of its 16 header bytes"
        raise FlowFormatError(f"{stream.name}: truncated capture: packet {number} has {what}")


def _options(body: bytes, order: str) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos + 4 <= len(body):
        code, length = struct.unpack_from(order + "HH", body, pos)
        if code == 0:
            return
        yield code, body[pos + 4:pos + 4 + length]
        pos += 4 + (length + 3) // 4 * 4


def _interface(body: bytes, order: str, name: str, offset: int) -> _Interface:
    linktype = struct.unpack_from(order + "H", body, 0)[0]
    face = _Interface(linktype)
    for code, value in _options(body[8:], order):
        if code == 9 and value:  # if_tsresol
            resol = value[0]
            exponent = resol & 0x7F
            face.units_per_second = 2 ** exponent if resol & 0x80 else 10 ** exponent
            if face.units_per_second > 1 << 63:
                raise FlowFormatError(f"{name}: interface at byte {offset}: time resolution {resol:#x} is finer "
                                      "than any clock (at most 10^-19 or 2^-63 s)")
        elif code == 14 and len(value) >= 8:  # if_tsoffset, seconds
            face.offset_s = struct.unpack_from(order + "q", value)[0]
        elif code == 13 and value:  # if_fcslen
            face.fcs_bytes = value[0]
    return face


def _pcapng_records(stream: _Stream) -> Iterator[RecordBatch]:
    interfaces: list[_Interface] = []
    section_base = 0  # interfaces of earlier sections come first in ``interfaces``
    order = "<"
    number = 1
    while True:
        # Packet blocks' offsets in the chunk; their fields are read by numpy after the walk. A
        # section header ends the walk, so one batch has one byte order.
        blocks: list[int] = []
        obsolete: list[int] = []  # indices in ``blocks`` of (obsolete) packet blocks: a 16-bit interface
        batch_order, batch_base = order, section_base
        data, pos, end = stream.data, stream.pos, len(stream.data)
        header = struct.Struct(order + "II")
        new_section = False
        while pos + 12 <= end:
            if data[pos:pos + 4] == PCAPNG_MAGIC:  # a section header: its own byte order and interfaces
                if blocks:
                    new_section = True
                    break
                magic = data[pos + 8:pos + 12]
                if magic not in (b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d"):
                    raise FlowFormatError(f"{stream.name}: damaged pcapng section header at byte "
                                          f"{stream.consumed + pos} (byte-order magic {magic.hex()}, expected 1a2b3c4d)")
                order = batch_order = "<" if magic == b"\x4d\x3c\x2b\x1a" else ">"
                header = struct.Struct(order + "II")
                section_base = batch_base = len(interfaces)
            kind, length = header.unpack_from(data, pos)
            if length < 12 or length % 4 or length > MAX_RECORD_BYTES + 64:
                raise FlowFormatError(f"{stream.name}: damaged pcapng block at byte {stream.consumed + pos} "
                                      f"(type {kind:#x}, length {length:,}: a block length is a multiple of 4, "
                                      f"12 to {MAX_RECORD_BYTES + 64:,} bytes)")
            if pos + length > end:
                break
            if kind == _EPB or kind == _PB:
                if kind == _PB:
                    obsolete.append(len(blocks))
                blocks.append(pos)
            elif kind == _IDB:
                interfaces.append(_interface(data[pos + 8:pos + length - 4], order, stream.name, stream.consumed + pos))
            elif kind == _SPB:
                raise FlowFormatError(f"{stream.name}: simple packet block at byte {stream.consumed + pos} has no "
                                      "time; fedaux needs packet times (capture without simple packet blocks)")
            pos += length
        stream.pos = pos
        if blocks:
            at = np.asarray(blocks, dtype=np.int64)
            length_, interface, high, low, caplen, wirelen = _header_words(data, at + 4, 6, batch_order).T
            if obsolete:  # a 16-bit interface id, then a 16-bit drop count
                rows = np.asarray(obsolete)
                interface[rows] = interface[rows] & 0xFFFF if batch_order == "<" else interface[rows] >> 16
            bad = np.flatnonzero(28 + caplen > length_ - 4)
            if len(bad):
                b = int(bad[0])
                raise FlowFormatError(f"{stream.name}: damaged pcapng packet block at byte "
                                      f"{stream.consumed + blocks[b]}: {int(caplen[b]):,} captured bytes do not fit "
                                      f"its {int(length_[b]):,}-byte block")
            yield _batch(stream, at + 28, caplen, wirelen, interface + batch_base, high << 32 | low, interfaces, number)
            number += len(blocks)
        if not new_section and not stream.more():
            break
    left = len(stream.data) - stream.pos
    if left:
        raise FlowFormatError(f"{stream.name}: truncated capture: the block at byte {stream.offset} has {left} of its "
                              "bytes (the file ends inside it)")
