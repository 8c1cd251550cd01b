"""An independent reference for fedaux's capture contract, built on scapy (not dpkt, not fedaux code).

:func:`reference_flows` reads a pcap or pcapng file with scapy's ``RawPcapReader`` /
``RawPcapNgReader`` and decodes every header with scapy's layer classes, one header at a time.
It walks the layers itself rather than letting scapy dissect a whole frame, because scapy's
automatic dissection differs from the contract where the contract is deliberately narrow: scapy
goes on inside ICMP errors, IP-in-IP, GRE and VXLAN, reads IP behind an 802.3 length field through
LLC/SNAP, reads a 1-byte (compressed) PPP protocol, cuts the transport at the IP length field, and
skips no 802.11 HT control field. The contract asks for the outermost IP header and its transport.

Times are exact integers, never floats: scapy gives the raw fields (pcap seconds and fraction,
pcapng high and low words and the interface's units per second); the rounding is done here.
What scapy 2.8 does not do, done here from the raw block bytes (see :class:`_PcapNgReader`):
pcapng ``if_tsoffset``, restarting interface numbers at every section header, the captured length
of an enhanced packet block, and noticing a file that ends inside a block or record.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scapy.contrib.chdlc import CHDLC
from scapy.contrib.mpls import MPLS
from scapy.error import Scapy_Exception
from scapy.layers.dot11 import Dot11, RadioTap
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.layers.ipsec import AH
from scapy.layers.l2 import SNAP, CookedLinux, CookedLinuxV2, Dot1Q, Dot3, Ether, LoopbackOpenBSD
from scapy.layers.ppp import HDLC, PPP, PPPoE
from scapy.packet import Packet
from scapy.utils import RawPcapNgReader, RawPcapReader

PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"

# The link types the contract decodes; any other is refused.
LINK_TYPES = {
    0: "BSD loopback", 1: "Ethernet", 9: "PPP", 12: "raw IP", 14: "raw IP", 50: "PPP in HDLC framing",
    51: "PPPoE", 101: "raw IP", 104: "Cisco HDLC", 105: "802.11", 108: "OpenBSD loopback",
    113: "Linux cooked (SLL)", 127: "802.11 with radiotap", 228: "raw IPv4", 229: "raw IPv6",
    276: "Linux cooked v2 (SLL2)",
}

# What a packet that is not part of a flow counts as (the CaptureReport's counters).
NOT_IP, NOT_TCP_UDP, UNDECODABLE, UNKNOWN_LENGTH = "not_ip", "not_tcp_udp", "undecodable", "unknown_length"

VLAN_TYPES = (0x8100, 0x88A8, 0x9100)
MPLS_TYPES = (0x8847, 0x8848)
PPPOE_SESSION = 0x8864
ETHERTYPE_VERSIONS = {0x0800: 4, 0x86DD: 6}
PPP_VERSIONS = {0x0021: 4, 0x0057: 6}
BSD_IPV6_FAMILIES = (24, 28, 30)  # AF_INET6 on NetBSD/OpenBSD, FreeBSD, Darwin
# IPv6 extension headers the contract walks; 44 (fragment) and 51 (AH) have their own lengths.
# 135 (mobility), 139 (HIP) and 140 (shim6) share the destination options' leading layout
# (next header, length in 8-byte units); scapy has no class for the last two.
IPV6_EXTENSIONS = {0: IPv6ExtHdrHopByHop, 43: IPv6ExtHdrRouting, 60: IPv6ExtHdrDestOpt,
                   135: IPv6ExtHdrDestOpt, 139: IPv6ExtHdrDestOpt, 140: IPv6ExtHdrDestOpt}
IPV6_FRAGMENT, IPV6_AH = 44, 51
TRANSPORTS = {6: "tcp", 17: "udp"}
# scapy's readers cut a packet at the size they are asked for; ask for everything.
NO_SIZE_LIMIT = 1 << 40
RADIOTAP_FCS_BYTES = 4


class ReferenceRefused(Exception):
    """The reference does not read the file: ``kind`` is one of ``link type`` (outside the
    contract), ``no time`` (a simple packet block), ``damaged`` or ``scapy`` (scapy cannot read it)."""

    def __init__(self, kind: str, reason: str, linktype: int | None = None):
        super().__init__(f"{kind}: {reason}")
        self.kind, self.reason, self.linktype = kind, reason, linktype


@dataclass
class ReferenceReport:
    """What the reference saw besides flows: the CaptureReport's counters, plus ``anomalies``,
    structural oddities of a file it still read (a captured length over the snap length or over
    the original length), which make a refusal as damaged acceptable."""

    packets: int = 0
    not_ip: int = 0
    not_tcp_udp: int = 0
    undecodable: int = 0
    unknown_length: int = 0
    anomalies: list[str] = field(default_factory=list)


class Key(NamedTuple):
    """A flow's protocol and endpoints, ``src`` being the first packet's sender (as FlowKey)."""

    proto: str
    src: str
    sport: int
    dst: str
    dport: int


@dataclass(frozen=True)
class _Frame:
    """One captured packet, with what the contract needs from its record."""

    number: int  # 1-based, in file order
    linktype: int  # the low 16 bits
    time_us: int
    data: bytes
    whole: bool  # captured length == original length
    ethernet_fcs: int  # FCS bytes at the end of an Ethernet frame, from a pcap link-type field's FCS bits


@dataclass(frozen=True)
class _Link:
    """Where a frame's IP header starts."""

    version: int
    offset: int
    fcs: int | None  # FCS bytes the frame ends with; None: scapy could not tell (a radiotap header it cannot read)


@dataclass(frozen=True)
class _Packet:
    """A TCP or UDP packet over IP: its ends (address bytes, port) and its length."""

    proto: str
    family: int
    src: tuple[bytes, int]
    dst: tuple[bytes, int]
    length: int


# --- files -> frames -------------------------------------------------------------------------------


def _round_half_up(numerator: int, denominator: int) -> int:
    """round(numerator / denominator), halves up, in integers (denominator > 0)."""
    return (2 * numerator + denominator) // (2 * denominator)


def _pcap_frames(path: Path, report: ReferenceReport) -> Iterator[_Frame]:
    try:
        reader = RawPcapReader(str(path))
    except (Scapy_Exception, EOFError, OSError) as err:
        raise ReferenceRefused("damaged", f"scapy cannot read the pcap header ({err})") from None
    if not isinstance(reader, RawPcapReader) or isinstance(reader, RawPcapNgReader):
        raise ReferenceRefused("scapy", "scapy did not read the file as pcap")
    size = os.path.getsize(path)
    linktype = reader.linktype & 0xFFFF
    _check_link_type(linktype)
    # The pcap format (IETF draft-ietf-opsawg-pcap, "LinkType and additional information"): bit
    # 28 (F) says bits 29-31 give the FCS length in 16-bit words: 0x30000001 is Ethernet with a
    # 2-byte FCS, 0x50000001 with a 4-byte one.
    field_bits = reader.linktype >> 28
    ethernet_fcs = 2 * (field_bits >> 1) if linktype == 1 and field_bits & 1 else 0
    number = 0
    try:
        while True:
            start = reader.f.tell()
            try:
                data, meta = reader._read_packet(size=NO_SIZE_LIMIT)
            except EOFError:
                if start != size:
                    raise ReferenceRefused("damaged", f"the file ends inside the record header after packet {number}") from None
                return
            number += 1
            if len(data) < meta.caplen:
                raise ReferenceRefused(
                    "damaged" if reader.f.tell() >= size else "scapy",
                    f"packet {number} has {len(data)} of its {meta.caplen} captured bytes")
            if meta.caplen > reader.snaplen:
                report.anomalies.append(f"packet {number}: captured length {meta.caplen} > snap length {reader.snaplen}")
            if meta.caplen > meta.wirelen:
                report.anomalies.append(f"packet {number}: captured length {meta.caplen} > original length {meta.wirelen}")
            if reader.nano:
                time_us = _round_half_up(meta.sec * 10**9 + meta.usec, 1000)
            else:
                time_us = meta.sec * 10**6 + meta.usec
            yield _Frame(number, linktype, time_us, data, meta.caplen == meta.wirelen, ethernet_fcs)
    finally:
        reader.close()


class _PcapNgReader(RawPcapNgReader):
    """scapy's pcapng reader, completed where scapy 2.8 falls short of the contract.

    - ``if_tsoffset`` (option 14, signed seconds added to every time of the interface): scapy
      ignores it, so each IDB's options are read again here.
    - Interface numbers restart at each section header block; scapy keeps the previous
      section's interfaces, so a second section's interface 0 would take the first's settings.
    - A packet block returns its interface number and captured length along with scapy's
      metadata (scapy's EPB metadata has no captured length, needed to tell whole packets).
    - A simple packet block has no time: the file is refused, as the contract says.
    - scapy ends the iteration without a word on a broken block: the start of every block is
      kept so that an end before the end of the file is told as damage.
    """

    def __init__(self, filename, fdesc=None, magic=None):
        self.tsoffsets: list[int] = []
        self.block_start = 0
        super().__init__(filename, fdesc, magic)

    def _read_block(self, size=NO_SIZE_LIMIT):
        self.block_start = self.f.tell()
        return super()._read_block(size)

    def _read_block_shb(self):
        self.interfaces, self.tsoffsets = [], []
        super()._read_block_shb()

    def _read_block_idb(self, block, size):
        super()._read_block_idb(block, size)
        linktype = self.interfaces[-1][0]
        _check_link_type(linktype)
        offset = self._read_options(block[8:]).get(14)
        self.tsoffsets.append(struct.unpack(self.endian + "q", offset)[0] if isinstance(offset, bytes) and len(offset) == 8 else 0)

    def _packet_block(self, packet, interface: int, caplen: int):
        if packet is None:  # scapy skips a block naming an interface no IDB describes
            raise ReferenceRefused("damaged", f"a packet block names interface {interface}, which no IDB describes")
        data, meta = packet
        if len(data) < caplen:
            raise ReferenceRefused("damaged", f"a packet block holds {len(data)} of its {caplen} captured bytes")
        return data, meta, self.tsoffsets[interface], caplen

    def _read_block_epb(self, block, size):
        packet = super()._read_block_epb(block, size)
        interface, _, _, caplen, _ = struct.unpack(self.endian + "5I", block[:20])
        return self._packet_block(packet, interface, caplen)

    def _read_block_pkt(self, block, size):
        packet = super()._read_block_pkt(block, size)
        interface, _, _, _, caplen, _ = struct.unpack(self.endian + "HH4I", block[:20])
        return self._packet_block(packet, interface, caplen)

    def _read_block_spb(self, block, size):
        raise ReferenceRefused("no time", "a simple packet block has no time stamp")


def _pcapng_frames(path: Path, report: ReferenceReport) -> Iterator[_Frame]:
    try:
        reader = _PcapNgReader(str(path))
    except (Scapy_Exception, EOFError, OSError) as err:
        raise ReferenceRefused("damaged", f"scapy cannot read the first section header ({err})") from None
    size = os.path.getsize(path)
    number = 0
    try:
        while True:
            try:
                data, meta, tsoffset, caplen = reader._read_packet(size=NO_SIZE_LIMIT)
            except EOFError:
                if reader.block_start != size:
                    raise ReferenceRefused("damaged", f"a broken block at byte {reader.block_start} (after packet {number})") from None
                return
            number += 1
            if caplen > meta.wirelen:
                report.anomalies.append(f"packet {number}: captured length {caplen} > original length {meta.wirelen}")
            ticks, units = (meta.tshigh << 32) + meta.tslow, meta.tsresol  # units per second
            time_us = _round_half_up((ticks + tsoffset * units) * 10**6, units)
            yield _Frame(number, meta.linktype, time_us, data, caplen == meta.wirelen, 0)
    finally:
        reader.close()


def _check_link_type(linktype: int) -> None:
    if linktype not in LINK_TYPES:
        raise ReferenceRefused("link type", f"link type {linktype} is outside the contract", linktype)


def _frames(path: Path, report: ReferenceReport) -> Iterator[_Frame]:
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic in PCAP_MAGICS:
        return _pcap_frames(path, report)
    if magic == PCAPNG_MAGIC:
        return _pcapng_frames(path, report)
    raise ReferenceRefused("damaged", f"not a pcap or pcapng file (magic {magic.hex()})")


# --- frames -> IP ----------------------------------------------------------------------------------

_SIZES: dict[type, int] = {}


def _header(cls: type[Packet], data: bytes, offset: int, need: int | None = None) -> Any:
    """scapy's decoding of one ``cls`` header at ``data[offset:]``, or None when fewer than ``need``
    bytes (default: scapy's size for the header) were captured there.

    Only the header is decoded (``stop_dissection_after``). scapy refuses a header cut short,
    and the contract sometimes needs only its first fields (a TCP header whose ports were
    captured, an extension header's next-header and length): the bytes after ``need`` are then
    zeros, and only fields within ``need`` are read.
    """
    if cls not in _SIZES:
        _SIZES[cls] = len(cls())
    need = _SIZES[cls] if need is None else need
    chunk = data[offset:offset + need]
    if len(chunk) < need:
        return None
    return cls(chunk + bytes(max(0, _SIZES[cls] - need) + 64), stop_dissection_after=cls)


def _after_ethertype(ethertype: int, data: bytes, offset: int) -> tuple[int, int] | str:
    """(IP version, offset of the IP header) after an ethertype at ``offset``, walking VLAN
    tags, MPLS labels and a PPPoE session header as the contract says for Ethernet."""
    while True:
        if ethertype in ETHERTYPE_VERSIONS:
            return ETHERTYPE_VERSIONS[ethertype], offset
        if ethertype in VLAN_TYPES:  # 802.1Q, 802.1ad and the old 0x9100 tags share one layout
            tag = _header(Dot1Q, data, offset)
            if tag is None:
                return UNDECODABLE
            ethertype, offset = tag.type, offset + 4
        elif ethertype in MPLS_TYPES:
            while True:
                label = _header(MPLS, data, offset)
                if label is None:
                    return UNDECODABLE
                offset += 4
                if label.s:
                    break
            if offset >= len(data):
                return UNDECODABLE
            version = data[offset] >> 4  # after the bottom label, the contract reads the IP version
            return (version, offset) if version in (4, 6) else NOT_IP
        elif ethertype == PPPOE_SESSION:
            if _header(PPPoE, data, offset) is None:
                return UNDECODABLE
            return _after_ppp_protocol(data, offset + 6, compressed=False)  # "2-byte PPP protocol"
        else:  # an 802.3 length (< 0x0600), ARP, LLDP, ...
            return NOT_IP


def _after_ppp_protocol(data: bytes, offset: int, *, compressed: bool) -> tuple[int, int] | str:
    """After a PPP protocol field. ``compressed``: an odd first byte is a 1-byte protocol
    (RFC 1661 protocol-field compression, which scapy's PPP reads); otherwise always 2 bytes."""
    if len(data) < offset + 1:
        return UNDECODABLE
    if data[offset] & 1:  # 2-byte protocols start with an even byte; 0x0021 and 0x0057 do
        if not compressed:
            return NOT_IP
        version = PPP_VERSIONS.get(_header(PPP, data, offset, need=1).proto)
        return (version, offset + 1) if version else NOT_IP
    if len(data) < offset + 2:
        return UNDECODABLE
    version = PPP_VERSIONS.get(_header(PPP, data, offset).proto)
    return (version, offset + 2) if version else NOT_IP


def _after_802_11(data: bytes, offset: int) -> tuple[int, int] | str:
    """802.11 data frames with a body, not protected, then LLC/SNAP and an ethertype."""
    frame = _header(Dot11, data, offset, need=2)  # the frame control field decides the rest
    if frame is None:
        return UNDECODABLE
    if frame.type != 2 or frame.subtype not in (0, 1, 2, 3, 8, 9, 10, 11) or frame.FCfield.protected:
        return NOT_IP  # management, control, null or CF-only frames; encrypted bodies
    qos = bool(frame.subtype & 8)
    # The header length by the contract's rule; scapy's Dot11QoS knows nothing of HT control.
    offset += 24 + (6 if frame.FCfield.to_DS and frame.FCfield.from_DS else 0)
    offset += (2 + (4 if frame.FCfield.order else 0)) if qos else 0
    snap = _header(SNAP, data, offset + 3)
    if snap is None:
        return UNDECODABLE
    if data[offset:offset + 3] != b"\xaa\xaa\x03" or snap.OUI != 0:
        return NOT_IP
    return _after_ethertype(snap.code, data, offset + 8)


def _radiotap_fcs(data: bytes, length: int) -> int | None:
    """FCS bytes at the end of an 802.11 frame whose radiotap flags say it has one (an 802.11 FCS is 4 bytes)."""
    try:
        radiotap = RadioTap(data[:length], stop_dissection_after=RadioTap)
        return RADIOTAP_FCS_BYTES if radiotap.present.Flags and radiotap.Flags.FCS else 0
    except Exception:  # scapy's radiotap parser on a damaged header: unknown, only needed for a 0 IP length
        return None


def _link(frame: _Frame) -> _Link | str:
    """Where the IP header starts in a frame, by the contract's rules for its link type."""
    data, linktype = frame.data, frame.linktype
    fcs: int | None = 0
    if linktype == 1:
        ether = _header(Ether, data, 0)
        if ether is None:
            return UNDECODABLE
        # scapy gives Dot3 for a type field <= 1500 (an 802.3 length); it is "not IP" either way.
        found = _after_ethertype(ether.len if isinstance(ether, Dot3) else ether.type, data, 14)
        fcs = frame.ethernet_fcs
    elif linktype in (0, 108):
        if len(data) < 4:
            return UNDECODABLE
        network = LoopbackOpenBSD(data[:4]).type
        # scapy's BSD Loopback keeps only the first byte of a little-endian family; read all four.
        families = {network} if linktype == 108 else {network, int.from_bytes(data[:4], "little")}
        found = (4, 4) if 2 in families else (6, 4) if families & set(BSD_IPV6_FAMILIES) else NOT_IP
    elif linktype in (12, 14, 101):
        version = data[0] >> 4 if data else None
        found = UNDECODABLE if version is None else (version, 0) if version in (4, 6) else NOT_IP
    elif linktype in (228, 229):
        found = (4 if linktype == 228 else 6, 0)
    elif linktype in (113, 276, 104):
        cls = {113: CookedLinux, 276: CookedLinuxV2, 104: CHDLC}[linktype]
        header = _header(cls, data, 0)
        if header is None:
            return UNDECODABLE
        version = ETHERTYPE_VERSIONS.get(header.proto)  # IPv4 and IPv6 only: no VLAN or MPLS walk here
        found = (version, _SIZES[cls]) if version else NOT_IP
    elif linktype in (9, 50):
        hdlc = _header(HDLC, data, 0)
        framed = hdlc is not None and (hdlc.address, hdlc.control) == (0xFF, 0x03)
        found = _after_ppp_protocol(data, 2 if framed else 0, compressed=True)
    elif linktype == 51:
        found = UNDECODABLE if _header(PPPoE, data, 0) is None else _after_ppp_protocol(data, 6, compressed=False)
    elif linktype == 127:
        radiotap = _header(RadioTap, data, 0, need=4)
        if radiotap is None:
            return UNDECODABLE
        found = _after_802_11(data, radiotap.len)
        if not isinstance(found, str):
            fcs = _radiotap_fcs(data, radiotap.len)
    elif linktype == 105:
        found = _after_802_11(data, 0)
    else:  # refused with the file header; never reached
        raise ReferenceRefused("link type", f"link type {linktype} is outside the contract", linktype)
    if isinstance(found, str):
        return found
    return _Link(found[0], found[1], fcs)


# --- IP -> packet ----------------------------------------------------------------------------------


def _packet(frame: _Frame, link: _Link, length: str) -> _Packet | str:
    """The outermost IP header and its TCP or UDP ports, and the packet's length by ``length``."""
    data, start = frame.data, link.offset
    # A header that contradicts itself is undecodable (the contract is silent): a version field
    # other than the link layer announced, an IPv4 header under 20 bytes, a total length under it.
    if link.version == 4:
        ip = _header(IP, data, start)
        if ip is None or ip.version != 4 or ip.ihl < 5 or 0 < ip.len < ip.ihl * 4 or len(data) < start + ip.ihl * 4:
            return UNDECODABLE
        if ip.frag != 0:  # a fragment after the first: no ports
            return NOT_TCP_UDP
        family, proto, transport, length_field = socket.AF_INET, ip.proto, start + ip.ihl * 4, ip.len
        ip_length = ip.len
    else:
        ip = _header(IPv6, data, start)
        if ip is None or ip.version != 6:
            return UNDECODABLE
        family, proto, transport, length_field = socket.AF_INET6, ip.nh, start + 40, ip.plen
        ip_length = 40 + ip.plen
        while proto in IPV6_EXTENSIONS or proto in (IPV6_FRAGMENT, IPV6_AH):
            if proto == IPV6_FRAGMENT:
                fragment = _header(IPv6ExtHdrFragment, data, transport)
                if fragment is None:
                    return UNDECODABLE
                if fragment.offset != 0:
                    return NOT_TCP_UDP
                proto, transport = fragment.nh, transport + 8
            elif proto == IPV6_AH:
                ah = _header(AH, data, transport, need=2)
                if ah is None:
                    return UNDECODABLE
                proto, transport = ah.nh, transport + (ah.payloadlen + 2) * 4
            else:
                extension = _header(IPV6_EXTENSIONS[proto], data, transport, need=2)
                if extension is None:
                    return UNDECODABLE
                proto, transport = extension.nh, transport + (extension.len + 1) * 8
    if proto not in TRANSPORTS:
        return NOT_TCP_UDP
    # The ports must be captured; for payload lengths, TCP's data offset too.
    tcp_payload = proto == 6 and length == "payload"
    segment = _header(TCP if proto == 6 else UDP, data, transport, need=13 if tcp_payload else 4)
    if segment is None:
        return UNDECODABLE
    if length_field == 0:  # segmentation offload, jumbograms: the captured bytes, when all are there
        if not frame.whole:
            return UNKNOWN_LENGTH
        if link.fcs is None:
            raise ReferenceRefused("scapy", f"scapy cannot read the radiotap flags of packet {frame.number}")
        ip_length = len(data) - start - link.fcs
    if length == "frame":
        size = ip_length + 14
    elif length == "ip":
        size = ip_length
    else:
        size = ip_length - (transport - start) - (segment.dataofs * 4 if proto == 6 else 8)
    src = (socket.inet_pton(family, ip.src), segment.sport)
    dst = (socket.inet_pton(family, ip.dst), segment.dport)
    return _Packet(TRANSPORTS[proto], family, src, dst, size)


# --- packets -> flows ------------------------------------------------------------------------------


@dataclass
class _OpenFlow:
    key: Key
    first_forward: bool
    times: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    directions: list[int] = field(default_factory=list)


def _flows(packets: list[tuple[int, _Packet]], idle_timeout_s: float) -> list[dict[str, Any]]:
    idle_us = Fraction(idle_timeout_s) * 10**6  # exact: the float's own value
    flows: list[_OpenFlow] = []
    current: dict[tuple, _OpenFlow] = {}  # canonical 5-tuple -> its open flow
    for time_us, packet in packets:
        forward = packet.src <= packet.dst
        ends = (packet.proto, packet.src, packet.dst) if forward else (packet.proto, packet.dst, packet.src)
        flow = current.get(ends)
        if flow is None or time_us - flow.times[-1] > idle_us:
            text = [(socket.inet_ntop(packet.family, a), port) for a, port in (packet.src, packet.dst)]
            flow = _OpenFlow(Key(packet.proto, *text[0], *text[1]), forward)
            flows.append(flow)
            current[ends] = flow
        flow.times.append(time_us)
        flow.lengths.append(packet.length)
        flow.directions.append(1 if forward == flow.first_forward else 0)
    return [{"key": f.key, "start_us": f.times[0], "time_us": np.asarray(f.times, dtype=np.int64),
             "lengths": np.asarray(f.lengths, dtype=np.int64), "directions": np.asarray(f.directions, dtype=np.uint8)}
            for f in flows]


def reference_flows(path: str | Path, idle_timeout_s: float = 60.0, length: str = "frame",
                    report: ReferenceReport | None = None) -> list[dict[str, Any]]:
    """The flows of a capture by the contract, in order of their first packet.

    Returns one dict per flow, as fedaux's ``capture_flows``: ``key`` (:class:`Key`), ``start_us``,
    ``time_us`` ``(n,)`` int64, ``lengths`` ``(n,)`` int64, ``directions`` ``(n,)`` uint8.
    A capture without TCP or UDP packets gives an empty list.

    Raises:
        ReferenceRefused: a link type outside the contract, a simple packet block, a damaged file,
            or one scapy cannot read.
    """
    if length not in ("frame", "ip", "payload"):
        raise ValueError(f"length={length!r}; choose frame, ip or payload")
    report = report if report is not None else ReferenceReport()
    packets: list[tuple[int, _Packet]] = []
    for frame in _frames(Path(path), report):
        report.packets += 1
        link = _link(frame)
        packet = link if isinstance(link, str) else _packet(frame, link, length)
        if isinstance(packet, str):
            setattr(report, packet, getattr(report, packet) + 1)
        else:
            packets.append((frame.time_us, packet))
    return _flows(packets, idle_timeout_s)


def link_types(path: str | Path) -> tuple[str, tuple[int, ...]]:
    """``("pcap" | "pcapng" | "other", link types)`` of a file, from its raw headers (pcap: the
    whole link-type field; pcapng: every IDB's), for tallies and samples; never raises."""
    data = Path(path).read_bytes()
    if data[:4] in PCAP_MAGICS:
        return "pcap", (struct.unpack(PCAP_MAGICS[data[:4]] + "I", data[20:24])[0],) if len(data) >= 24 else ()
    if data[:4] != PCAPNG_MAGIC:
        return "other", ()
    found, offset, endian = [], 0, "<"
    while offset + 12 <= len(data):
        if data[offset:offset + 4] == PCAPNG_MAGIC:
            endian = "<" if data[offset + 8:offset + 12] == b"\x4d\x3c\x2b\x1a" else ">"
        kind, size = struct.unpack(endian + "II", data[offset:offset + 8])
        if kind == 1 and offset + 10 <= len(data):
            found.append(struct.unpack(endian + "H", data[offset + 8:offset + 10])[0])
        if size < 12:
            break
        offset += size
    return "pcapng", tuple(sorted(set(found)))
