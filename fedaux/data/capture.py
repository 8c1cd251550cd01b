"""Packet captures (pcap, pcapng) as flows.

``data.root`` may name one capture file (its flows form one class, named after the file) or a folder
with one sub-folder of captures per class (the class is the folder name, as for text flows). A flow
is a bidirectional 5-tuple (TCP or UDP, over IPv4 or IPv6); a packet's direction is 1 when it
travels like the flow's first packet and 0 otherwise; a flow ends after
``data.capture.idle_timeout_s`` of silence. A flow of one packet, or of packets sharing one
timestamp, is a flow like any other. ``data.capture.filter`` keeps matching flows
(:mod:`fedaux.data.flow_filter`). Times are exact to the microsecond (rounded half up).

``data.capture.length`` chooses what a packet's length counts: ``frame`` (the IP packet plus 14
bytes, an Ethernet header's worth, whatever the capture's real link layer: so Ethernet, Linux
cooked, Wi-Fi and raw-IP captures give the same numbers for the same packets, and the UC Davis
files' frame lengths are matched), ``ip`` (the IP total length) or ``payload`` (the TCP or UDP
payload). Lengths come from the IP header's length field, so a capture cut at a short snap length
still gives full lengths. The store records which.

Three layers, one job each: :mod:`fedaux.data.pcap_records` reads the container (pcap or pcapng,
per-interface link types and clocks, exact times) in chunks; :mod:`fedaux.data.packet_decode`
decodes link, network and transport headers as numpy columns; this module turns packets into
flows (:class:`CaptureDecoder` for a stream, :func:`capture_flows` for a file). Why not dpkt,
scapy or NFStream: dpkt misreads pcapng files whose interfaces differ and builds a Python object
per packet (4x slower than NFStream); scapy is slower still; NFStream (a C flow meter) keeps
per-packet times only in milliseconds and only for a flow's first 255 packets. Reading the record
headers in Python and everything per packet in numpy is faster than NFStream
(``benchmarks/bench_capture.py``); scapy serves as the independent reader the tests compare with.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import dpkt
import numpy as np

from fedaux.data.flow_filter import FlowKey, compile_filter
from fedaux.data.flows import PACKET_LENGTHS, FlowCollection
from fedaux.data.formats import FLOW_READERS, FlowReader
from fedaux.data.packet_decode import (
    ETHERNET,
    LINK_TYPES,
    NOT_IP,
    NOT_TCP_UDP,
    OK,
    UNDECODABLE,
    UNKNOWN_LENGTH,
    decode_batch,
    link_type_name,
)
from fedaux.data.pcap_records import capture_format, read_records
from fedaux.data.reader import FlowFormatError, _natural_key
from fedaux.errors import ConfigError

log = logging.getLogger(__name__)

FRAME_OVERHEAD = 14  # ``frame`` = IP length + an Ethernet header, on every link layer


def capture_kind(path: Path) -> str | None:
    """``"pcap"``, ``"pcapng"`` or None, from the file's first four bytes."""
    try:
        with open(path, "rb") as handle:
            return capture_format(handle.read(4))
    except OSError:
        return None


def _class_captures(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and capture_kind(p)), key=_natural_key)


def looks_like_captures(path: Path) -> bool:
    """A capture file, or a folder whose sub-folders hold capture files."""
    if path.is_file():
        return capture_kind(path) is not None
    if not path.is_dir():
        return False
    return any(_class_captures(d) for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))


@dataclass
class CaptureReport:
    """What a capture held besides the flows kept: counted, never dropped silently."""

    packets: int = 0
    not_ip: int = 0  # ARP, LLDP, encrypted Wi-Fi, ...
    not_tcp_udp: int = 0  # ICMP, IPv4 fragments after the first, ...
    undecodable: int = 0  # damaged or truncated headers
    unknown_length: int = 0  # an IP length field of 0 in a packet not captured whole
    filtered_flows: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        unknown = f", {self.unknown_length} of unknown length" if self.unknown_length else ""
        return (f"{self.packets:,} packets: {self.not_ip} not IP, {self.not_tcp_udp} neither TCP nor UDP, "
                f"{self.undecodable} undecodable{unknown}; {self.filtered_flows} flow(s) left out by the filter")

    def count(self, status: np.ndarray) -> None:
        counts = np.bincount(status, minlength=5)
        self.packets += len(status)
        self.not_ip += int(counts[NOT_IP])
        self.not_tcp_udp += int(counts[NOT_TCP_UDP])
        self.undecodable += int(counts[UNDECODABLE])
        self.unknown_length += int(counts[UNKNOWN_LENGTH])


@dataclass
class PacketColumns:
    """TCP/UDP packets of one batch, in capture order.

    Attributes:
        time_us: ``(N,)`` int64 unix microseconds.
        key: ``(N,)`` int32 index of the packet's 5-tuple in :attr:`CaptureDecoder.keys`.
        forward: ``(N,)`` uint8, 1 when sent by the 5-tuple's first endpoint.
        size: ``(N,)`` int32 length in the decoder's ``length`` quantity.
    """

    time_us: np.ndarray
    key: np.ndarray
    forward: np.ndarray
    size: np.ndarray


class CaptureDecoder:
    """Packets of captures as :class:`PacketColumns`, with one table of 5-tuples across batches.

    A 5-tuple is kept as ``(proto, family, a high, a low, a port, b high, b low, b port)`` with its
    endpoints in order (``a <= b``, comparing address bytes then port): a packet is ``forward``
    when its sender is ``a``. :meth:`flow_key` gives it as text.

    Args:
        length: the quantity of :data:`~fedaux.data.flows.PACKET_LENGTHS` a packet's size counts.
        report: counts what is not a TCP/UDP packet.
        vectorised: False decodes every packet one at a time (the reference path the tests compare).
    """

    def __init__(self, length: str = "frame", report: CaptureReport | None = None, vectorised: bool = True) -> None:
        if length not in PACKET_LENGTHS:
            raise ConfigError(f"data.capture.length={length!r} is not valid; choose one of {list(PACKET_LENGTHS)}")
        self.length, self.vectorised = length, vectorised
        self.report = report if report is not None else CaptureReport()
        self.keys: dict[int, tuple[int, ...]] = {}  # index -> 5-tuple, for the 5-tuples not forgotten
        self._index: dict[tuple[int, ...], int] = {}
        self._next = 0

    def packets(self, handle: BinaryIO, name: str) -> Iterator[PacketColumns]:
        """The TCP/UDP packets of the capture read from ``handle``, batch by batch, as they are read.

        Raises:
            FlowFormatError: the capture cannot be read, or holds packets of a link type not decoded.
        """
        for batch in read_records(handle, name):
            refused = sorted(set(np.unique(batch.linktype).tolist()) - set(LINK_TYPES))
            if refused:
                supported = ", ".join(link_type_name(k) for k in sorted(LINK_TYPES))
                raise FlowFormatError(f"{name}: link type {link_type_name(refused[0])} is not supported; "
                                      f"supported: {supported}")
            decoded = decode_batch(batch, need_tcp_header=self.length == "payload", vectorised=self.vectorised)
            if self.length == "payload":
                short = (decoded.status == OK) & (decoded.ip_length < decoded.header_bytes)
                decoded.status[short] = UNDECODABLE  # headers longer than the packet: damaged
            self.report.count(decoded.status)
            rows = np.flatnonzero(decoded.status == OK)
            if len(rows):
                yield self._columns(batch.time_us[rows], decoded, rows)

    def _columns(self, time_us: np.ndarray, decoded, rows: np.ndarray) -> PacketColumns:
        src, dst = decoded.src[rows], decoded.dst[rows]
        sport, dport = decoded.sport[rows], decoded.dport[rows]
        forward = (src[:, 0] < dst[:, 0]) | ((src[:, 0] == dst[:, 0]) & (
            (src[:, 1] < dst[:, 1]) | ((src[:, 1] == dst[:, 1]) & (sport <= dport))))
        a, pa = np.where(forward[:, None], src, dst), np.where(forward, sport, dport)
        b, pb = np.where(forward[:, None], dst, src), np.where(forward, dport, sport)
        kind = decoded.proto[rows].astype(np.uint64) << np.uint64(8) | decoded.family[rows].astype(np.uint64)
        table = np.column_stack([kind, a, pa.astype(np.uint64), b, pb.astype(np.uint64)])
        unique, inverse = _unique_rows(table)
        ids = np.empty(len(unique), dtype=np.int64)
        for u, row in enumerate(unique.tolist()):
            ends = (row[0] >> 8, row[0] & 0xFF, *row[1:])
            index = self._index.get(ends)
            if index is None:
                index = self._index[ends] = self._next
                self.keys[index] = ends
                self._next += 1
            ids[u] = index
        ip_length = decoded.ip_length[rows]
        if self.length == "frame":
            size = ip_length + FRAME_OVERHEAD
        elif self.length == "ip":
            size = ip_length
        else:
            size = ip_length - decoded.header_bytes[rows]
        return PacketColumns(time_us, ids[inverse].astype(np.int32), forward.astype(np.uint8), size.astype(np.int32))

    def forget(self, index: int) -> None:
        """Drop the 5-tuple ``index`` (a stream's flow that ended idle), so the table holds only the
        active 5-tuples; a later packet of the same 5-tuple gets a new index."""
        ends = self.keys.pop(index, None)
        if ends is not None:
            del self._index[ends]

    def flow_key(self, index: int, first_forward: bool) -> FlowKey:
        """The 5-tuple ``index`` as text, ``src`` the sender of a flow's first packet."""
        proto, family, a_high, a_low, pa, b_high, b_low, pb = self.keys[index]
        a, b = _address(family, a_high, a_low), _address(family, b_high, b_low)
        src, sport, dst, dport = (a, pa, b, pb) if first_forward else (b, pb, a, pa)
        return FlowKey("tcp" if proto == 6 else "udp", src, sport, dst, dport)


def _unique_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(table, axis=0, return_inverse=True)``, by way of a 64-bit hash of each row:
    sorting one integer column is ~10x faster than sorting rows. A collision is detected (every
    row is compared with its hash's first row) and then the rows are sorted after all."""
    mixed = np.zeros(len(table), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in table.T:  # FNV-style: multiply by an odd constant, add the next column
            mixed = mixed * np.uint64(0x100000001B3) + column
            mixed ^= mixed >> np.uint64(29)
    _, first, inverse = np.unique(mixed, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    if not np.array_equal(table[first][inverse], table):
        unique, inverse = np.unique(table, axis=0, return_inverse=True)
        return unique, inverse.reshape(-1)
    return table[first], inverse


def _address(family: int, high: int, low: int) -> str:
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, low.to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, (high << 64 | low).to_bytes(16, "big"))


def split_flows(time_us: np.ndarray, key: np.ndarray, idle_timeout_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Packets grouped into flows: each 5-tuple's packets in capture order, cut after an idle gap.

    Returns ``order`` (packet indices, flow after flow) and ``bounds`` (``(F + 1,)``: flow ``f``
    is ``order[bounds[f]:bounds[f + 1]]``), flows in order of their first packet.
    """
    by_key = np.argsort(key, kind="stable")  # each 5-tuple's packets together, in capture order
    k, t = key[by_key], time_us[by_key]
    new_flow = np.ones(len(by_key), dtype=bool)
    new_flow[1:] = (k[1:] != k[:-1]) | (np.diff(t) > int(round(idle_timeout_s * 1e6)))
    del k, t
    flow = np.cumsum(new_flow) - 1  # flow of each packet of ``by_key``
    first_packet = by_key[new_flow]
    rank = np.empty(len(first_packet), dtype=np.int64)
    rank[np.argsort(first_packet, kind="stable")] = np.arange(len(first_packet))
    order = by_key[np.argsort(rank[flow], kind="stable")]  # flows by their first packet, each in capture order
    sizes = np.bincount(rank, weights=np.diff(np.append(np.flatnonzero(new_flow), len(by_key))),
                        minlength=len(rank)).astype(np.int64)
    return order, np.concatenate(([0], np.cumsum(sizes)))


def capture_flows(path: Path, *, idle_timeout_s: float = 60.0, flow_filter: str = "", length: str = "frame",
                  report: CaptureReport | None = None, vectorised: bool = True) -> list[dict[str, Any]]:
    """The flows of one capture file, in order of their first packet.

    Returns one dict per flow: ``key`` (:class:`~fedaux.data.flow_filter.FlowKey`, ``src`` the
    first packet's sender), ``start_us`` (unix microseconds), ``time_us`` ``(n,)`` int64,
    ``lengths`` ``(n,)`` int32 and ``directions`` ``(n,)`` uint8 (1: sent like the first packet).
    """
    keep = compile_filter(flow_filter)
    report = report if report is not None else CaptureReport()
    decoder = CaptureDecoder(length, report, vectorised)
    try:
        with open(path, "rb") as handle:
            batches = list(decoder.packets(handle, str(path)))
    except OSError as err:
        raise FlowFormatError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not batches:
        raise FlowFormatError(f"{path}: no TCP or UDP packets over IP ({report.summary()})")
    time_us = np.concatenate([b.time_us for b in batches])
    key = np.concatenate([b.key for b in batches])
    forward = np.concatenate([b.forward for b in batches])
    sizes = np.concatenate([b.size for b in batches])
    del batches
    order, bounds = split_flows(time_us, key, idle_timeout_s)
    # Every column in flow order once; each flow's arrays are views of these.
    time_us, key, forward, sizes = time_us[order], key[order], forward[order], sizes[order]
    del order
    first = bounds[:-1]
    directions = (forward == np.repeat(forward[first], np.diff(bounds))).astype(np.uint8)
    flows = []
    for lo, hi in zip(first.tolist(), bounds[1:].tolist()):
        flow_key = decoder.flow_key(int(key[lo]), bool(forward[lo]))
        if not keep(flow_key):
            report.filtered_flows += 1
            continue
        flows.append({"key": flow_key, "start_us": int(time_us[lo]), "time_us": time_us[lo:hi],
                      "lengths": sizes[lo:hi], "directions": directions[lo:hi]})
    return flows


def flow_name(capture: str, key: FlowKey, start_us: int) -> str:
    """``<capture>#<proto> <src>:<sport> > <dst>:<dport> @<unix seconds>`` (IPv6 addresses in brackets)."""
    def end(addr: str, port: int) -> str:
        return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"

    return f"{capture}#{key.proto} {end(key.src, key.sport)} > {end(key.dst, key.dport)} @{start_us / 1e6:.6f}"


def read_captures(root: str | Path, *, idle_timeout_s: float = 60.0, flow_filter: str = "", length: str = "frame",
                  on_bad_flow: str = "error") -> tuple[FlowCollection, list[str]]:
    """Flows of a capture file (one class, named after the file) or of a folder with one sub-folder
    of captures per class. Every flow of a capture is in that capture's group.

    Returns the flows and, under ``on_bad_flow: skip``, the messages of captures skipped as bad.

    Raises:
        FlowFormatError: a capture that cannot be read (named, with the packet where it broke), an
            unsupported link type, a class folder without captures, no flow left after the filter.
    """
    root = Path(root)
    if root.is_file():
        classes = [(root.stem, [root])]
    else:
        folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        classes = [(d.name, _class_captures(d)) for d in folders]
        empty = [d for d, (_, files) in zip(folders, classes) if not files]
        if empty:
            raise FlowFormatError(f"{empty[0]}: class folder has no captures (pcap or pcapng files)")
    report, skipped = CaptureReport(), []
    times, lengths, directions, labels, names, groups, starts = [], [], [], [], [], [], []
    for label, (class_name, files) in enumerate(classes):
        for file in files:
            try:
                flows = capture_flows(file, idle_timeout_s=idle_timeout_s, flow_filter=flow_filter, length=length,
                                      report=report)
            except FlowFormatError as err:
                if on_bad_flow == "error":
                    raise
                skipped.append(str(err))
                continue
            capture = file.name if root.is_file() else f"{class_name}/{file.name}"
            for flow in flows:
                times.append(flow["time_us"])
                lengths.append(flow["lengths"])
                directions.append(flow["directions"])
                labels.append(label)
                names.append(flow_name(capture, flow["key"], flow["start_us"]))
                groups.append(capture)
                starts.append(flow["start_us"])
    if not names:
        raise FlowFormatError(f"{root}: no flow left (filter {flow_filter!r}; {report.summary()}; "
                              f"{len(skipped)} capture(s) skipped as bad)")
    log.info("%s: %d flows; %s", root, len(names), report.summary())
    counts = np.array([len(t) for t in times], dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    all_times = np.concatenate(times)
    iat_us = np.diff(all_times, prepend=all_times[:1])
    iat_us[offsets[:-1]] = 0  # a capture flow starts at its first packet
    all_lengths = np.concatenate(lengths)
    if all_lengths.max() > np.iinfo(np.uint16).max:
        big = int(np.argmax([flow.max() for flow in lengths]))
        hint = (f"; with data.capture.length=ip it would count {int(lengths[big].max()) - FRAME_OVERHEAD} bytes"
                if length == "frame" and lengths[big].max() - FRAME_OVERHEAD <= np.iinfo(np.uint16).max else
                " (segmentation offload or BIG TCP: capture on the wire, or with offload off)")
        raise FlowFormatError(f"{root}: flow {names[big]!r} has a packet of {int(lengths[big].max()):,} bytes, more than "
                              f"a store keeps (65,535){hint}")
    collection = FlowCollection(
        class_names=tuple(c for c, _ in classes), flow_names=tuple(names), labels=np.asarray(labels, dtype=np.int64),
        offsets=offsets.astype(np.int64), iat_us=iat_us.astype(np.int64), lengths=all_lengths.astype(np.uint16),
        directions=np.concatenate(directions).astype(np.uint8), unix_start=np.asarray(starts, dtype=np.float64) / 1e6,
        provenance=f"captures under '{root.name}' ({report.summary()})", packet_length=length,
        flow_groups=tuple(groups),
    )
    return collection, skipped


FLOW_READERS.register("capture")(FlowReader(
    "packet captures: a pcap/pcapng file, or a folder with one sub-folder of captures per class",
    detect=looks_like_captures,
    read=lambda path, data_cfg: read_captures(
        path, idle_timeout_s=data_cfg.capture.idle_timeout_s, flow_filter=data_cfg.capture.filter,
        length=data_cfg.capture.length, on_bad_flow=data_cfg.on_bad_flow),
    priority=20,
))


def write_captures(flows: FlowCollection, folder: str | Path, snaplen: int = 96) -> list[Path]:
    """Write ``flows`` as one pcap per class under ``folder/<class>/<class>.pcap``.

    Each packet becomes an Ethernet/IPv4/UDP frame with its recorded time (to the microsecond),
    direction (flow ``i``'s client is ``10.0.0.1:(10000 + i)``, its server ``10.0.0.2:443``) and
    length (the frame length for a ``frame`` store, the IP length for ``ip``), cut at ``snaplen``
    bytes as a capture tool would. Packets of one class's flows are interleaved in time, each flow
    keeping its own order (its small reorderings included). Reading the folder back with
    :func:`read_captures` gives the same flows: the round trip the tests check, and the capture the
    capture benchmark reads.
    """
    if flows.packet_length == "payload":
        raise ValueError("a store of payload lengths cannot be written back as frames")
    folder = Path(folder)
    overhead = 14 if flows.packet_length == "frame" else 0  # Ethernet header; IP total = frame - 14
    written = []
    for label, name in enumerate(flows.class_names):
        members = np.flatnonzero(flows.labels == label)
        rows: list[tuple[int, int, int]] = []  # (flow, packet position, time in µs)
        keys: list[int] = []
        for i in members:
            lo, hi = int(flows.offsets[i]), int(flows.offsets[i + 1])
            gaps = flows.iat_us[lo:hi].copy()
            gaps[0] = 0
            times = int(round(flows.unix_start[i] * 1e6)) + np.cumsum(gaps)
            rows.extend((int(i), p, int(t)) for p, t in zip(range(lo, hi), times))
            keys.extend(np.maximum.accumulate(times).tolist())  # never ahead of the flow's own order
        order = sorted(range(len(rows)), key=lambda r: (keys[r], rows[r][0], rows[r][1]))
        path = folder / name / f"{name}.pcap"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            writer = dpkt.pcap.Writer(handle, snaplen=snaplen, linktype=ETHERNET)
            for r in order:
                flow, packet, time_us = rows[r]
                up = flows.directions[packet] == 1
                ip_length = int(flows.lengths[packet]) - overhead
                client, server = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"
                # A full-size payload, so dpkt fills in the length fields and checksums; the cut at
                # snaplen comes after, as in a capture tool.
                segment = dpkt.udp.UDP(sport=10000 + flow if up else 443, dport=443 if up else 10000 + flow,
                                       data=bytes(ip_length - 28))
                ip = dpkt.ip.IP(src=client if up else server, dst=server if up else client, p=dpkt.ip.IP_PROTO_UDP,
                                ttl=64, data=segment)
                frame = dpkt.ethernet.Ethernet(src=b"\x02\x00\x00\x00\x00\x01", dst=b"\x02\x00\x00\x00\x00\x02",
                                               type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
                writer.writepkt(bytes(frame)[:snaplen], ts=time_us / 1e6)
        written.append(path)
    return written


def check_config(cfg: Any) -> None:
    """``data.capture``'s rules (called by :func:`fedaux.config.validate`)."""
    if cfg.data.capture.idle_timeout_s <= 0:
        raise ConfigError(f"data.capture.idle_timeout_s={cfg.data.capture.idle_timeout_s} must be > 0")
    compile_filter(cfg.data.capture.filter)
