"""Link, network and transport headers of captured packets, decoded as numpy columns.

:func:`decode_batch` turns a :class:`~fedaux.data.pcap_records.RecordBatch` into
:class:`DecodedPackets`: per packet a status (TCP/UDP over IP, or why not), the 5-tuple, the IP
length and the bytes of IP and transport headers.

Two paths, one meaning. The common packets (Ethernet, Linux cooked or raw IP, then IPv4 or IPv6
without extension headers, then TCP or UDP) are decoded for all packets at once with numpy
gathers over the chunk's bytes; every other packet goes through :func:`decode_packet`, a plain
per-packet decoder that knows every supported link type (the module's reference: the tests check
that sending every packet through it gives the same columns). What is decoded:

- Link types (:data:`LINK_TYPES`): Ethernet (VLAN/QinQ stacks, MPLS label stacks, PPPoE
  sessions), BSD and OpenBSD loopback, raw IP (12, 14, 101, 228, 229), Linux cooked v1 and v2,
  PPP, PPP in HDLC framing, PPPoE without Ethernet, Cisco HDLC, 802.11 with and without radiotap
  (data frames through LLC/SNAP; protected, management and control frames are not IP).
- The outermost IPv4 or IPv6 header (IPv6 extension headers walked); a fragment after the first
  has no ports and counts as neither TCP nor UDP; the first fragment counts with its ports.
- Lengths: the IP header's length field. A field of 0 (segmentation offload, jumbograms) takes
  the captured bytes from the IP header on (less any FCS) when the packet was captured whole, and
  is otherwise an unknown length, counted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from fedaux.data.pcap_records import RecordBatch

# Per-packet status.
OK, NOT_IP, NOT_TCP_UDP, UNDECODABLE, UNKNOWN_LENGTH = 0, 1, 2, 3, 4

ETHERNET, NULL, RAW, RAW_BSD, PPP, PPP_HDLC, PPP_ETHER, RAW_LINKTYPE = 1, 0, 12, 14, 9, 50, 51, 101
C_HDLC, IEEE802_11, LOOP, LINUX_SLL, RADIOTAP, RAW4, RAW6, LINUX_SLL2 = 104, 105, 108, 113, 127, 228, 229, 276
LINK_TYPES = {
    NULL: "BSD loopback", ETHERNET: "Ethernet", PPP: "PPP", RAW: "raw IP", RAW_BSD: "raw IP",
    PPP_HDLC: "PPP in HDLC framing", PPP_ETHER: "PPPoE", RAW_LINKTYPE: "raw IP", C_HDLC: "Cisco HDLC",
    IEEE802_11: "802.11", LOOP: "OpenBSD loopback", LINUX_SLL: "Linux cooked v1", RADIOTAP: "802.11 with radiotap",
    RAW4: "raw IPv4", RAW6: "raw IPv6", LINUX_SLL2: "Linux cooked v2",
}
# Names of link types fedaux meets but does not decode, for the refusal message (pcap's LINKTYPE_* list).
OTHER_LINK_TYPES = {
    6: "IEEE 802.5 token ring", 7: "ARCnet", 8: "SLIP", 10: "FDDI", 100: "ATM RFC 1483", 107: "Frame Relay",
    119: "Prism 802.11", 123: "SunATM", 129: "ARCnet Linux", 163: "AVS 802.11", 189: "USB Linux", 192: "PPI",
    195: "IEEE 802.15.4 with FCS", 220: "USB Linux mmapped", 226: "Solaris IPNET", 227: "SocketCAN",
    230: "IEEE 802.15.4 without FCS", 239: "NFLOG", 242: "IP over InfiniBand", 249: "USBPcap",
    251: "Bluetooth LE link layer", 253: "Netlink", 258: "Apple PKTAP", 281: "Broadcom switch tag",
    282: "Broadcom switch tag, prepended", 284: "Marvell DSA tag", 285: "Marvell EDSA tag",
    **{147 + k: f"user {k}" for k in range(16)},
}
_IPV4, _IPV6, _BY_VERSION = 0x0800, 0x86DD, -1  # network protocol after the link layer
_VLAN = (0x8100, 0x88A8, 0x9100, 0x9200)
_MPLS = (0x8847, 0x8848)
_PPPOE_SESSION = 0x8864
_PPP_TO_ETHERTYPE = {0x0021: _IPV4, 0x0057: _IPV6}
_IPV6_EXTENSIONS = (0, 43, 44, 60, 51, 135, 139, 140)
_SNAP = (b"\xaa\xaa\x03\x00\x00\x00", b"\xaa\xaa\x03\x00\x00\xf8")  # RFC 1042 and 802.1H bridge tunnel


def link_type_name(linktype: int) -> str:
    """``"127 (802.11 with radiotap)"``: a link type as the messages name it."""
    name = LINK_TYPES.get(linktype) or OTHER_LINK_TYPES.get(linktype)
    return f"{linktype} ({name})" if name else str(linktype)


@dataclass
class DecodedPackets:
    """Headers of a batch of packets. Fields other than ``status`` mean something only where
    ``status == OK``.

    Attributes:
        status: ``(N,)`` uint8, :data:`OK`, :data:`NOT_IP`, :data:`NOT_TCP_UDP`,
            :data:`UNDECODABLE` or :data:`UNKNOWN_LENGTH`.
        proto: ``(N,)`` uint8 IP protocol, 6 (TCP) or 17 (UDP); ``family``: 4 or 6.
        src, dst: ``(N, 2)`` uint64 addresses as two big-endian halves (IPv4 in the low half), so
            comparing rows compares the address bytes.
        sport, dport: ``(N,)`` int64 ports.
        ip_length: ``(N,)`` int64 IP total length (header included).
        header_bytes: ``(N,)`` int64 IP header(s) plus the TCP or UDP header.
    """

    status: np.ndarray
    proto: np.ndarray
    family: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    sport: np.ndarray
    dport: np.ndarray
    ip_length: np.ndarray
    header_bytes: np.ndarray

    @classmethod
    def empty(cls, n: int) -> DecodedPackets:
        zeros = np.zeros(n, dtype=np.int64)
        return cls(np.full(n, UNDECODABLE, dtype=np.uint8), np.zeros(n, np.uint8), np.zeros(n, np.uint8),
                   np.zeros((n, 2), np.uint64), np.zeros((n, 2), np.uint64), zeros.copy(), zeros.copy(), zeros.copy(),
                   zeros.copy())


# ----------------------------------------------------------------------------- one packet at a time
class _Stop(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


def _need(frame: bytes, end: int) -> None:
    if len(frame) < end:
        raise _Stop(UNDECODABLE)


def _be16(frame: bytes, at: int) -> int:
    _need(frame, at + 2)
    return frame[at] << 8 | frame[at + 1]


def _after_ethertype(frame: bytes, ethertype: int, at: int) -> tuple[int, int]:
    """Follow VLAN tags, MPLS labels and a PPPoE session header to the network protocol."""
    while True:
        if ethertype in _VLAN:
            ethertype, at = _be16(frame, at + 2), at + 4
        elif ethertype in _MPLS:
            while True:
                _need(frame, at + 4)
                bottom = frame[at + 2] & 1
                at += 4
                if bottom:
                    return _BY_VERSION, at
        elif ethertype == _PPPOE_SESSION:
            ppp = _be16(frame, at + 6)
            if ppp not in _PPP_TO_ETHERTYPE:
                raise _Stop(NOT_IP)
            return _PPP_TO_ETHERTYPE[ppp], at + 8
        elif ethertype < 0x0600:  # an 802.3 length field: LLC, not IP
            raise _Stop(NOT_IP)
        else:
            return ethertype, at


def _ppp(frame: bytes, at: int) -> tuple[int, int]:
    if frame[at:at + 2] == b"\xff\x03":  # HDLC address and control
        at += 2
    _need(frame, at + 1)
    if frame[at] & 1:  # a compressed, one-byte protocol field
        protocol, at = frame[at], at + 1
    else:
        protocol, at = _be16(frame, at), at + 2
    if protocol not in _PPP_TO_ETHERTYPE:
        raise _Stop(NOT_IP)
    return _PPP_TO_ETHERTYPE[protocol], at


def _radiotap_fcs(frame: bytes) -> int:
    """4 when the radiotap header's flags say the frame ends in an FCS, else 0."""
    present = struct.unpack_from("<I", frame, 4)[0]
    at = 8
    word = present
    while word & 0x80000000:  # further present words
        _need(frame, at + 4)
        word = struct.unpack_from("<I", frame, at)[0]
        at += 4
    if not present & 0x2:  # no flags field
        return 0
    if present & 0x1:  # TSFT (8 bytes, 8-aligned) comes first
        at = (at + 7) // 8 * 8 + 8
    _need(frame, at + 1)
    return 4 if frame[at] & 0x10 else 0


def _dot11(frame: bytes, at: int) -> tuple[int, int]:
    """An 802.11 data frame's LLC/SNAP ethertype; anything else is not IP."""
    _need(frame, at + 24)
    control, flags = frame[at], frame[at + 1]
    kind, subtype = (control >> 2) & 3, control >> 4
    if kind != 2 or subtype & 4 or flags & 0x40:  # not data, a null-data subtype (no body), or encrypted
        raise _Stop(NOT_IP)
    header = 24 + (6 if flags & 3 == 3 else 0)
    if subtype & 8:  # QoS data: a 2-byte QoS control, and HT control when the order bit is set
        header += 2 + (4 if flags & 0x80 else 0)
    at += header
    _need(frame, at + 8)
    if frame[at:at + 6] not in _SNAP:
        raise _Stop(NOT_IP)
    return _after_ethertype(frame, _be16(frame, at + 6), at + 8)


def _link(linktype: int, frame: bytes) -> tuple[int, int, int]:
    """(network protocol, offset of the network header, FCS bytes found in the link header)."""
    if linktype == ETHERNET:
        return (*_after_ethertype(frame, _be16(frame, 12), 14), 0)
    if linktype == LINUX_SLL:
        return (*_after_ethertype(frame, _be16(frame, 14), 16), 0)
    if linktype == LINUX_SLL2:
        _need(frame, 20)
        return (*_after_ethertype(frame, _be16(frame, 0), 20), 0)
    if linktype in (RAW, RAW_BSD, RAW_LINKTYPE):
        return _BY_VERSION, 0, 0
    if linktype == RAW4:
        return _IPV4, 0, 0
    if linktype == RAW6:
        return _IPV6, 0, 0
    if linktype in (NULL, LOOP):
        _need(frame, 4)
        family = int.from_bytes(frame[:4], "big")
        if linktype == NULL and family not in (2, 24, 28, 30):  # host byte order of the capturing machine
            family = int.from_bytes(frame[:4], "little")
        if family == 2:
            return _IPV4, 4, 0
        if family in (24, 28, 30):
            return _IPV6, 4, 0
        raise _Stop(NOT_IP)
    if linktype in (PPP, PPP_HDLC):
        return (*_ppp(frame, 0), 0)
    if linktype == PPP_ETHER:
        ppp = _be16(frame, 6)
        if ppp not in _PPP_TO_ETHERTYPE:
            raise _Stop(NOT_IP)
        return _PPP_TO_ETHERTYPE[ppp], 8, 0
    if linktype == C_HDLC:
        return (*_after_ethertype(frame, _be16(frame, 2), 4), 0)
    if linktype == IEEE802_11:
        return (*_dot11(frame, 0), 0)
    if linktype == RADIOTAP:
        _need(frame, 8)
        length = struct.unpack_from("<H", frame, 2)[0]
        fcs = _radiotap_fcs(frame)
        return (*_dot11(frame, length), fcs)
    raise ValueError(f"link type {linktype} is not decoded")  # read_captures refuses it before this


def _split_address(raw: bytes) -> tuple[int, int]:
    value = int.from_bytes(raw, "big")
    return value >> 64, value & 0xFFFFFFFFFFFFFFFF


def decode_packet(linktype: int, frame: bytes, wirelen: int, fcs_bytes: int = 0, need_tcp_header: bool = False) -> tuple:
    """One packet: ``(status, proto, family, src, dst, sport, dport, ip_length, header_bytes)``
    with ``src``/``dst`` as ``(high, low)`` halves, or ``(status,)`` when it is not OK.

    ``need_tcp_header``: the TCP header's length is needed (payload lengths), so a TCP packet cut
    before its data-offset byte is undecodable.
    """
    try:
        network, at, link_fcs = _link(linktype, frame)
        if network not in (_IPV4, _IPV6, _BY_VERSION):
            raise _Stop(NOT_IP)
        _need(frame, at + 1)
        version = frame[at] >> 4
        if network == _BY_VERSION:
            network = {4: _IPV4, 6: _IPV6}.get(version, 0)
        if network not in (_IPV4, _IPV6):
            raise _Stop(NOT_IP)
        if version != (4 if network == _IPV4 else 6):
            raise _Stop(UNDECODABLE)
        if network == _IPV4:
            _need(frame, at + 20)
            header = (frame[at] & 15) * 4
            length = _be16(frame, at + 2)
            if header < 20 or 0 < length < header:
                raise _Stop(UNDECODABLE)
            if _be16(frame, at + 6) & 0x1FFF:  # a fragment after the first: no ports
                raise _Stop(NOT_TCP_UDP)
            proto, family = frame[at + 9], 4
            src, dst = (0, int.from_bytes(frame[at + 12:at + 16], "big")), (0, int.from_bytes(frame[at + 16:at + 20], "big"))
            transport = at + header
        else:
            _need(frame, at + 40)
            payload = _be16(frame, at + 4)
            length = 40 + payload if payload else 0
            proto, family, transport = frame[at + 6], 6, at + 40
            src, dst = _split_address(frame[at + 8:at + 24]), _split_address(frame[at + 24:at + 40])
            while proto in _IPV6_EXTENSIONS:
                _need(frame, transport + 8)
                if proto == 44:  # fragment header: a fragment after the first has no ports
                    if _be16(frame, transport + 2) >> 3:
                        raise _Stop(NOT_TCP_UDP)
                    size = 8
                elif proto == 51:  # AH counts 4-byte words
                    size = (frame[transport + 1] + 2) * 4
                else:
                    size = (frame[transport + 1] + 1) * 8
                proto, transport = frame[transport], transport + size
        if proto not in (6, 17):
            raise _Stop(NOT_TCP_UDP)
        _need(frame, transport + (13 if need_tcp_header and proto == 6 else 4))
        sport, dport = _be16(frame, transport), _be16(frame, transport + 2)
        headers = transport - at + ((frame[transport + 12] >> 4) * 4 if proto == 6 and need_tcp_header else 8)
        if length == 0:  # segmentation offload or a jumbogram: the captured bytes, if all were captured
            if len(frame) != wirelen:
                raise _Stop(UNKNOWN_LENGTH)
            length = len(frame) - max(fcs_bytes, link_fcs) - at
    except _Stop as stop:
        return (stop.status,)
    return OK, proto, family, src, dst, sport, dport, length, headers


# ----------------------------------------------------------------------------- all packets at once
def _gather(batch: RecordBatch, rows: np.ndarray, at: np.ndarray, width: int) -> np.ndarray:
    """``(len(rows), width)`` uint8: ``width`` bytes from offset ``at`` of each packet in ``rows``."""
    index = (batch.start[rows] + at)[:, None] + np.arange(width)
    return batch.buffer[index]


def _addresses(batch: RecordBatch, rows: np.ndarray, at: np.ndarray, width: int) -> np.ndarray:
    raw = np.ascontiguousarray(_gather(batch, rows, at, width))
    if width == 4:
        low = raw.view(">u4").reshape(-1).astype(np.uint64)
        return np.stack([np.zeros_like(low), low], axis=1)
    return raw.view(">u8").reshape(-1, 2).astype(np.uint64)


def decode_batch(batch: RecordBatch, *, need_tcp_header: bool = False, vectorised: bool = True) -> DecodedPackets:
    """Decode every packet of ``batch``; ``vectorised=False`` sends them all through :func:`decode_packet`."""
    n = len(batch)
    out = DecodedPackets.empty(n)
    slow = np.ones(n, dtype=bool)
    if vectorised and n:
        _decode_common(batch, out, slow, need_tcp_header)
    for row in np.flatnonzero(slow):
        begin = int(batch.start[row])
        frame = batch.buffer[begin:begin + int(batch.caplen[row])].tobytes()
        result = decode_packet(int(batch.linktype[row]), frame, int(batch.wirelen[row]), int(batch.fcs_bytes[row]),
                               need_tcp_header)
        out.status[row] = result[0]
        if result[0] == OK:
            (out.proto[row], out.family[row], src, dst, out.sport[row], out.dport[row], out.ip_length[row],
             out.header_bytes[row]) = result[1:]
            out.src[row], out.dst[row] = src, dst
    return out


def _decode_common(batch: RecordBatch, out: DecodedPackets, slow: np.ndarray, need_tcp_header: bool) -> None:
    """Decode the common packets in place and clear their ``slow`` flag; leave the rest set."""
    buffer, start, caplen, linktype = batch.buffer, batch.start, batch.caplen, batch.linktype

    def byte(rows: np.ndarray, at: np.ndarray | int) -> np.ndarray:
        return buffer[start[rows] + at].astype(np.int64)

    def be16(rows: np.ndarray, at: np.ndarray | int) -> np.ndarray:
        return byte(rows, at) << 8 | byte(rows, at + 1)

    n = len(start)
    network = np.zeros(n, dtype=np.int64)  # 0: left to the per-packet path
    net_at = np.zeros(n, dtype=np.int64)
    for kinds, ethertype_at, link_header in (((ETHERNET,), 12, 14), ((LINUX_SLL,), 14, 16), ((LINUX_SLL2,), 0, 20)):
        rows = np.flatnonzero(np.isin(linktype, kinds) & (caplen >= link_header))
        ethertype = be16(rows, ethertype_at)
        ip = (ethertype == _IPV4) | (ethertype == _IPV6)
        network[rows[ip]], net_at[rows[ip]] = ethertype[ip], link_header
        if kinds == (ETHERNET,):  # neither IP nor a header that leads to IP: settled here
            other = ~ip & (ethertype >= 0x0600) & ~np.isin(ethertype, (*_VLAN, *_MPLS, _PPPOE_SESSION))
            out.status[rows[other]] = NOT_IP
            slow[rows[other]] = False
    raw = np.flatnonzero(np.isin(linktype, (RAW, RAW_BSD, RAW_LINKTYPE, RAW4, RAW6)) & (caplen >= 1))
    version = byte(raw, 0) >> 4
    network[raw] = np.where(version == 4, _IPV4, np.where(version == 6, _IPV6, 0))
    network[raw[(linktype[raw] == RAW4) & (version != 4)]] = 0  # a mismatch: the per-packet path says why
    network[raw[(linktype[raw] == RAW6) & (version != 6)]] = 0

    # IPv4 with a sane header, captured up to the ports.
    v4 = np.flatnonzero(network == _IPV4)
    at = net_at[v4]
    v4 = v4[caplen[v4] >= at + 20]
    at = net_at[v4]
    first = byte(v4, at)
    header = (first & 15) * 4
    length = be16(v4, at + 2)
    fragment = be16(v4, at + 6) & 0x1FFF
    proto = byte(v4, at + 9)
    sane = (first >> 4 == 4) & (header >= 20) & (length >= header)
    settled_other = sane & ((fragment != 0) | ((proto != 6) & (proto != 17)))
    out.status[v4[settled_other]] = NOT_TCP_UDP
    slow[v4[settled_other]] = False
    tcp_extra = np.where(need_tcp_header & (proto == 6), 13, 4)
    ok = sane & ~settled_other & (caplen[v4] >= at + header + tcp_extra)
    rows, at, header, length, proto = v4[ok], at[ok], header[ok], length[ok], proto[ok]
    transport = at + header
    _settle(out, slow, batch, rows, proto, 4, _addresses(batch, rows, at + 12, 4), _addresses(batch, rows, at + 16, 4),
            be16(rows, transport), be16(rows, transport + 2), length,
            header + _transport_header(byte, rows, transport, proto, need_tcp_header))

    # IPv6 whose next header is TCP or UDP, or a protocol that is neither (no extension header).
    v6 = np.flatnonzero(network == _IPV6)
    at = net_at[v6]
    v6 = v6[(caplen[v6] >= at + 40) & (byte(v6, at) >> 4 == 6)]
    at = net_at[v6]
    payload = be16(v6, at + 4)
    proto = byte(v6, at + 6)
    settled_other = ~np.isin(proto, (6, 17, *_IPV6_EXTENSIONS))
    out.status[v6[settled_other]] = NOT_TCP_UDP
    slow[v6[settled_other]] = False
    tcp_extra = np.where(need_tcp_header & (proto == 6), 13, 4)
    ok = ((proto == 6) | (proto == 17)) & (payload > 0) & (caplen[v6] >= at + 40 + tcp_extra)
    rows, at, payload, proto = v6[ok], at[ok], payload[ok], proto[ok]
    transport = at + 40
    _settle(out, slow, batch, rows, proto, 6, _addresses(batch, rows, at + 8, 16), _addresses(batch, rows, at + 24, 16),
            be16(rows, transport), be16(rows, transport + 2), 40 + payload,
            40 + _transport_header(byte, rows, transport, proto, need_tcp_header))


def _transport_header(byte, rows: np.ndarray, transport: np.ndarray, proto: np.ndarray, need_tcp_header: bool) -> np.ndarray:
    if not need_tcp_header:
        return np.full(len(rows), 8, dtype=np.int64)
    return np.where(proto == 6, (byte(rows, transport + 12) >> 4) * 4, 8)


def _settle(out: DecodedPackets, slow: np.ndarray, batch: RecordBatch, rows: np.ndarray, proto: np.ndarray, family: int,
            src: np.ndarray, dst: np.ndarray, sport: np.ndarray, dport: np.ndarray, length: np.ndarray,
            headers: np.ndarray) -> None:
    out.status[rows] = OK
    out.proto[rows], out.family[rows] = proto, family
    out.src[rows], out.dst[rows] = src, dst
    out.sport[rows], out.dport[rows] = sport, dport
    out.ip_length[rows], out.header_bytes[rows] = length, headers
    slow[rows] = False
