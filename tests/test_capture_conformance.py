"""Conformance of fedaux's capture reader (``capture_flows``) to the capture contract, checked from
outside: synthetic captures with flows, times and lengths written out by hand, the Zeek captures
and the whole tcpdump test corpus, each compared with an independent scapy reader
(:mod:`tests.capture_reference`).

Each synthetic test writes one capture into ``tmp_path``; :func:`_check` asserts that fedaux and
the reference both give exactly the flows the test spells out. Times are absolute unix µs, so a
test's times read as ``T0 + offset``.
"""

from __future__ import annotations

import collections
import logging
import re
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from scapy.contrib.chdlc import CHDLC
from scapy.contrib.mpls import MPLS
from scapy.layers.dot11 import Dot11, Dot11Beacon, Dot11Elt, Dot11QoS, RadioTap
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.layers.l2 import LLC, SNAP, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Dot3, Ether
from scapy.layers.ppp import PPPoE
from scapy.layers.sctp import SCTP
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from fedaux.data.capture import CaptureReport, capture_flows
from fedaux.data.reader import FlowFormatError
from tests.capture_reference import ReferenceRefused, ReferenceReport, link_types, reference_flows
from tests.conftest import REPO

PCAPS = REPO.parent / "shared" / "data" / "pcaps"
ZEEK, TCPDUMP = PCAPS / "zeek", PCAPS / "tcpdump"

logging.getLogger("scapy").setLevel(logging.ERROR)  # scapy warns about every odd record of the corpus

T0 = 1_700_000_000  # seconds; T0_US + n is n µs later
T0_US = T0 * 10**6
MAC_A, MAC_B = "02:00:00:00:00:01", "02:00:00:00:00:02"

# The packets most tests carry, and their lengths: IP (total), frame (IP + 14), payload.
A = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5000, dport=53) / Raw(bytes(20)))  # IP 48
B = bytes(IP(src="10.0.0.2", dst="10.0.0.1") / UDP(sport=53, dport=5000) / Raw(bytes(40)))  # IP 68, A's reply
C = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(sport=40000, dport=443))  # IP 60
A_LEN0 = bytes(IP(src="10.0.0.1", dst="10.0.0.2", len=0) / UDP(sport=5000, dport=53) / Raw(bytes(20)))
C_LEN0 = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2", plen=0) / TCP(sport=40000, dport=443))
KEY_A = ("udp", "10.0.0.1", 5000, "10.0.0.2", 53)
KEY_B = ("udp", "10.0.0.2", 53, "10.0.0.1", 5000)
KEY_C = ("tcp", "2001:db8::1", 40000, "2001:db8::2", 443)
FRAME_A, FRAME_B, FRAME_C = 62, 82, 74


# --- writing captures ------------------------------------------------------------------------------


class Rec(NamedTuple):
    """One pcap record: seconds, fraction (µs or ns), the captured bytes, the original length."""

    sec: int
    frac: int
    data: bytes
    wirelen: int | None = None


def _pcap(path: Path, linktype: int, records: list[Rec], *, nano: bool = False, endian: str = "<") -> Path:
    """A pcap file; ``linktype`` is the whole 32-bit field (FCS bits included)."""
    out = [struct.pack(endian + "IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype)]
    for r in records:
        out.append(struct.pack(endian + "IIII", r.sec, r.frac, len(r.data), r.wirelen or len(r.data)) + r.data)
    path.write_bytes(b"".join(out))
    return path


def _block(kind: int, body: bytes, endian: str) -> bytes:
    body += bytes(-len(body) % 4)
    return struct.pack(endian + "II", kind, len(body) + 12) + body + struct.pack(endian + "I", len(body) + 12)


def _option(code: int, value: bytes, endian: str) -> bytes:
    return struct.pack(endian + "HH", code, len(value)) + value + bytes(-len(value) % 4)


def _shb(endian: str = "<") -> bytes:
    return _block(0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1), endian)


def _idb(linktype: int, *, tsresol: int | None = None, tsoffset: int | None = None, endian: str = "<") -> bytes:
    """An interface: ``tsresol`` is the raw if_tsresol byte (6: µs, 9: ns, 0x80 | k: 2^-k s)."""
    options = b""
    if tsresol is not None:
        options += _option(9, bytes([tsresol]), endian)
    if tsoffset is not None:
        options += _option(14, struct.pack(endian + "q", tsoffset), endian)
    if options:
        options += _option(0, b"", endian)
    return _block(1, struct.pack(endian + "HHI", linktype, 0, 0) + options, endian)


def _epb(interface: int, ticks: int, data: bytes, endian: str = "<") -> bytes:
    header = struct.pack(endian + "5I", interface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data))
    return _block(6, header + data, endian)


def _pb(interface: int, ticks: int, data: bytes, endian: str = "<") -> bytes:
    """The obsolete packet block (2-byte interface id and drop count)."""
    header = struct.pack(endian + "HH4I", interface, 0, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data))
    return _block(2, header + data, endian)


def _spb(data: bytes, endian: str = "<") -> bytes:
    return _block(3, struct.pack(endian + "I", len(data)) + data, endian)


def _ethertype(ip: bytes) -> int:
    return 0x0800 if ip[0] >> 4 == 4 else 0x86DD


def _ether(payload: bytes, ethertype: int | None = None) -> bytes:
    """An Ethernet frame; the ethertype defaults to the IP version of ``payload``."""
    return bytes(Ether(dst=MAC_B, src=MAC_A, type=ethertype or _ethertype(payload))) + payload


def _sll(ip: bytes) -> bytes:
    return bytes(CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, src=bytes(8), proto=_ethertype(ip))) + ip


def _sll2(ip: bytes) -> bytes:
    return bytes(CookedLinuxV2(proto=_ethertype(ip), lladdrtype=1, lladdrlen=6, src=bytes(8))) + ip


def _with_fcs(frame: bytes) -> bytes:
    return frame + struct.pack("<I", zlib.crc32(frame))


def _snap(ip: bytes, ethertype: int | None = None) -> bytes:
    return bytes(LLC(dsap=0xAA, ssap=0xAA, ctrl=3) / SNAP(OUI=0, code=ethertype or _ethertype(ip))) + ip


# --- comparing flows -------------------------------------------------------------------------------


def flow(key: tuple, times_us: list[int], lengths: list[int], directions: list[int]) -> dict[str, Any]:
    """An expected flow; ``key`` is ``(proto, src, sport, dst, dport)``, src the first sender."""
    return {"key": key, "start_us": times_us[0], "time_us": times_us, "lengths": lengths, "directions": directions}


def _key(key: Any) -> tuple:
    """fedaux's FlowKey, the reference's Key (a named tuple) or a test's tuple, as a plain tuple."""
    return tuple(key) if isinstance(key, tuple) else (key.proto, key.src, key.sport, key.dst, key.dport)


def _plain(flows: list[dict[str, Any]]) -> list[tuple]:
    return [(_key(f["key"]), int(f["start_us"]), [int(t) for t in f["time_us"]], [int(n) for n in f["lengths"]],
             [int(d) for d in f["directions"]]) for f in flows]


def first_difference(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> str | None:
    """Where two lists of flows first differ (flow, field, packet), or None when they are equal."""
    got_plain, want_plain = _plain(got), _plain(want)
    for i, (g, w) in enumerate(zip(got_plain, want_plain)):
        if g[0] != w[0]:
            return f"flow {i}: key {g[0]}, expected {w[0]}"
        if g[1] != w[1]:
            return f"flow {i} {w[0]}: start_us {g[1]}, expected {w[1]}"
        for name, a, b in zip(("time_us", "lengths", "directions"), g[2:], w[2:]):
            if a != b:
                j = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                return (f"flow {i} {w[0]}: {name}[{j}] = {a[j] if j < len(a) else 'missing'}, "
                        f"expected {b[j] if j < len(b) else 'missing'} ({len(a)} vs {len(b)} packets)")
    if len(got_plain) != len(want_plain):
        extra = got_plain[len(want_plain)][0] if len(got_plain) > len(want_plain) else want_plain[len(got_plain)][0]
        return f"{len(got_plain)} flows, expected {len(want_plain)} (first unmatched: {extra})"
    return None


def _check(path: Path, expected: list[dict[str, Any]], *, length: str = "frame",
           idle_timeout_s: float = 60.0) -> CaptureReport:
    """fedaux and the reference both read exactly ``expected`` from ``path``; fedaux's report."""
    reference = reference_flows(path, idle_timeout_s=idle_timeout_s, length=length)
    assert first_difference(reference, expected) is None, f"reference on {path.name}: {first_difference(reference, expected)}"
    report = CaptureReport()
    got = capture_flows(path, idle_timeout_s=idle_timeout_s, length=length, report=report)
    assert first_difference(got, expected) is None, f"fedaux on {path.name}: {first_difference(got, expected)}"
    return report


def _assert_one_line_naming(error: Exception, path: Path, *words: str) -> None:
    message = str(error)
    assert "\n" not in message and path.name in message, message
    for word in words:
        assert word in message, message


def _us(n: int) -> int:
    return T0_US + n


# --- flows and times -------------------------------------------------------------------------------


def test_single_packet_flows_are_flows(tmp_path):
    """Three 5-tuples of one packet each: three flows of one packet, in file order."""
    other = bytes(IP(src="10.0.0.2", dst="10.0.0.1") / UDP(sport=54, dport=5000) / Raw(bytes(40)))  # IP 68
    path = _pcap(tmp_path / "single.pcap", 1, [Rec(T0, 10, _ether(C)), Rec(T0, 20, _ether(A)), Rec(T0, 30, _ether(other))])
    _check(path, [flow(KEY_C, [_us(10)], [FRAME_C], [1]), flow(KEY_A, [_us(20)], [FRAME_A], [1]),
                  flow(("udp", "10.0.0.2", 54, "10.0.0.1", 5000), [_us(30)], [FRAME_B], [1])])


def test_flow_fields_have_the_contract_types(tmp_path):
    """start_us an int; time_us int64, lengths int32 (a store keeps 16 bits), directions uint8 (frame, ip and payload)."""
    path = _pcap(tmp_path / "types.pcap", 1, [Rec(T0, 1, _ether(A)), Rec(T0, 2, _ether(B))])
    for length in ("frame", "ip", "payload"):
        for f in capture_flows(path, length=length):
            assert isinstance(f["start_us"], int), (length, type(f["start_us"]))
            dtypes = f["time_us"].dtype, f["lengths"].dtype, f["directions"].dtype
            assert dtypes == (np.int64, np.int32, np.uint8), (length, dtypes)


def test_packets_sharing_one_timestamp_form_one_flow(tmp_path):
    """A request, its reply and a second request in the same microsecond: one flow."""
    path = _pcap(tmp_path / "same_time.pcap", 1, [Rec(T0, 7, _ether(p)) for p in (A, B, A)])
    _check(path, [flow(KEY_A, [_us(7)] * 3, [FRAME_A, FRAME_B, FRAME_A], [1, 0, 1])])


def test_a_flow_is_keyed_by_its_first_sender_and_listed_by_its_first_packet(tmp_path):
    """The first packet is the reply (the larger endpoint): it names src and sets direction 1;
    flows come in the order of their first packet, whatever the order of their later ones."""
    path = _pcap(tmp_path / "order.pcap", 1, [Rec(T0, 1, _ether(B)), Rec(T0, 2, _ether(C)), Rec(T0, 3, _ether(A))])
    _check(path, [flow(KEY_B, [_us(1), _us(3)], [FRAME_B, FRAME_A], [1, 0]), flow(KEY_C, [_us(2)], [FRAME_C], [1])])


def test_a_gap_longer_than_the_idle_timeout_starts_a_new_flow(tmp_path):
    """A gap of exactly the timeout keeps the flow; a microsecond more starts a new one."""
    records = [Rec(T0, 0, _ether(A)), Rec(T0 + 60, 0, _ether(B)), Rec(T0 + 120, 1, _ether(A))]
    path = _pcap(tmp_path / "idle.pcap", 1, records)
    _check(path, [flow(KEY_A, [_us(0), _us(60_000_000)], [FRAME_A, FRAME_B], [1, 0]),
                  flow(KEY_A, [_us(120_000_001)], [FRAME_A], [1])])


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcap_microsecond_times_are_seconds_and_microseconds(tmp_path, endian):
    """µs pcap in either byte order: sec * 10^6 + usec, exactly."""
    records = [Rec(T0, 0, _ether(A)), Rec(T0, 999_999, _ether(B)), Rec(T0 + 1, 5, _ether(A))]
    path = _pcap(tmp_path / "usec.pcap", 1, records, endian=endian)
    _check(path, [flow(KEY_A, [_us(0), _us(999_999), _us(1_000_005)], [FRAME_A, FRAME_B, FRAME_A], [1, 0, 1])])


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcap_nanosecond_times_round_half_up(tmp_path, endian):
    """ns pcap: 1 499 ns -> 1 µs, 1 500 ns -> 2 µs, 999 999 500 ns carries into the next second."""
    fractions = [1_499, 1_500, 999_999_499, 999_999_500]
    path = _pcap(tmp_path / "nsec.pcap", 1, [Rec(T0, ns, _ether(A)) for ns in fractions], nano=True, endian=endian)
    _check(path, [flow(KEY_A, [_us(1), _us(2), _us(999_999), _us(1_000_000)], [FRAME_A] * 4, [1] * 4)])


def test_pcapng_interfaces_have_their_own_link_type_resolution_and_offset(tmp_path):
    """Interface 0: Ethernet, if_tsresol µs. Interface 1: Linux cooked, if_tsresol ns and
    if_tsoffset T0 s. Packets interleave; a flow's packets come from both interfaces."""
    blocks = [
        _shb(), _idb(1, tsresol=6), _idb(113, tsresol=9, tsoffset=T0),
        _epb(0, T0_US + 1, _ether(A)),
        _epb(1, 1_500, _sll(B)),  # 1.5 µs after T0: rounds up to 2
        _epb(0, T0_US + 3, _ether(C)),
        _epb(1, 3_499, _sll(A)),  # 3.499 µs: 3
    ]
    path = tmp_path / "two_interfaces.pcapng"
    path.write_bytes(b"".join(blocks))
    _check(path, [flow(KEY_A, [_us(1), _us(2), _us(3)], [FRAME_A, FRAME_B, FRAME_A], [1, 0, 1]),
                  flow(KEY_C, [_us(3)], [FRAME_C], [1])])


def test_pcapng_sections_restart_interfaces_and_byte_order(tmp_path):
    """Section 1 (little-endian): interface 0 Ethernet with the default µs. Section 2
    (big-endian): interface 0 is raw IPv4 with if_tsresol 2^-20 s and if_tsoffset T0 s, and one
    packet comes in an obsolete packet block. Reading section 2's interface 0 as section 1's
    would decode the raw packets as Ethernet."""
    ticks_5_5_s, ticks_1 = 5 * 2**20 + 2**19, 1  # 5.5 s; 2^-20 s = 0.954 µs -> 1 µs
    blocks = [
        _shb("<"), _idb(1, endian="<"), _epb(0, T0_US, _ether(A), "<"),
        _shb(">"), _idb(228, tsresol=0x80 | 20, tsoffset=T0, endian=">"),
        _epb(0, ticks_1, B, ">"), _pb(0, ticks_5_5_s, A, ">"),
    ]
    path = tmp_path / "sections.pcapng"
    path.write_bytes(b"".join(blocks))
    _check(path, [flow(KEY_A, [_us(0), _us(1), _us(5_500_000)], [FRAME_A, FRAME_B, FRAME_A], [1, 0, 1])])


def test_a_simple_packet_block_has_no_time_and_is_refused(tmp_path):
    """An SPB carries no time stamp: the file is refused in one line naming it."""
    path = tmp_path / "simple_block.pcapng"
    path.write_bytes(_shb() + _idb(1) + _epb(0, T0_US, _ether(A)) + _spb(_ether(B)))
    with pytest.raises(FlowFormatError) as refused:
        capture_flows(path)
    _assert_one_line_naming(refused.value, path)
    with pytest.raises(ReferenceRefused, match="simple packet block"):
        reference_flows(path)


@pytest.mark.parametrize("container", ["pcap", "pcapng"])
def test_a_capture_cut_inside_its_last_packet_is_refused_or_read_up_to_the_cut(tmp_path, container):
    """A file that ends inside a record or block: refused in one line naming the file, or its
    complete packets read (the contract does not say which)."""
    path = tmp_path / f"cut.{container}"
    if container == "pcap":
        _pcap(path, 1, [Rec(T0, 1, _ether(A)), Rec(T0, 2, _ether(B))])
    else:
        path.write_bytes(_shb() + _idb(1) + _epb(0, T0_US + 1, _ether(A)) + _epb(0, T0_US + 2, _ether(B)))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ReferenceRefused, match="damaged"):
        reference_flows(path)
    try:
        got = capture_flows(path)
    except FlowFormatError as refused:
        _assert_one_line_naming(refused, path)
    else:
        assert first_difference(got, [flow(KEY_A, [_us(1)], [FRAME_A], [1])]) is None


# --- lengths ---------------------------------------------------------------------------------------


def test_ip_length_zero_takes_the_captured_bytes_when_the_packet_is_whole(tmp_path):
    """IPv4 total length 0 and IPv6 payload length 0 (segmentation offload, jumbograms): the
    length of the captured bytes from the IP header on when captured whole; cut by the snap
    length, the packet's length is unknown and it is left out of every flow."""
    records = [
        Rec(T0, 1, _ether(A_LEN0)),
        Rec(T0, 2, _ether(A_LEN0)[:44], wirelen=len(_ether(A_LEN0))),  # unknown length
        Rec(T0, 3, _ether(A)),
        Rec(T0, 4, _ether(C_LEN0)),
    ]
    path = _pcap(tmp_path / "length0.pcap", 1, records)
    report = _check(path, [flow(KEY_A, [_us(1), _us(3)], [FRAME_A, FRAME_A], [1, 1]),
                           flow(KEY_C, [_us(4)], [FRAME_C], [1])])
    assert report.packets == 4
    assert getattr(report, "unknown_length", 1) == 1
    _check(path, [flow(KEY_A, [_us(1), _us(3)], [48, 48], [1, 1]), flow(KEY_C, [_us(4)], [60], [1])], length="ip")


@pytest.mark.parametrize("field, fcs_bytes", [(0x30000001, 2), (0x50000001, 4)])
def test_ethernet_fcs_bits_in_the_link_type_field(tmp_path, field, fcs_bytes):
    """The pcap link-type field's FCS bits (IETF draft-ietf-opsawg-pcap: bit 28 set, bits 29-31 the
    FCS length in 16-bit words): 0x30000001 is Ethernet ending with 2 FCS bytes, 0x50000001 with 4.
    Lengths come from the IP header; a 0 length field takes the captured bytes less the FCS."""
    def with_fcs(frame: bytes) -> bytes:
        return _with_fcs(frame)[:len(frame) + fcs_bytes]

    records = [Rec(T0, 1, with_fcs(_ether(A))), Rec(T0, 2, with_fcs(_ether(A_LEN0))), Rec(T0, 3, with_fcs(_ether(C_LEN0)))]
    path = _pcap(tmp_path / "fcs.pcap", field, records)
    _check(path, [flow(KEY_A, [_us(1), _us(2)], [FRAME_A, FRAME_A], [1, 1]), flow(KEY_C, [_us(3)], [FRAME_C], [1])])


# A TCP segment with 12 bytes of options (data offset 8) and 100 bytes of data: IP 152.
D = bytes(IP(src="10.0.0.3", dst="10.0.0.4") / TCP(sport=1234, dport=80, options=[("NOP", None)] * 12) / Raw(bytes(100)))
KEY_D = ("tcp", "10.0.0.3", 1234, "10.0.0.4", 80)
LENGTHS = {"frame": [FRAME_A, FRAME_B, FRAME_C, 166], "ip": [48, 68, 60, 152], "payload": [20, 40, 0, 100]}


@pytest.mark.parametrize("length", ["frame", "ip", "payload"])
@pytest.mark.parametrize("linktype, wrap", [(1, _ether), (113, _sll), (276, _sll2), (101, lambda ip: ip)],
                         ids=["ethernet", "linux-cooked", "linux-cooked-v2", "raw"])
def test_the_same_packets_have_the_same_lengths_on_every_link_layer(tmp_path, linktype, wrap, length):
    """frame = IP + 14 whatever the link layer; ip = the IP length; payload = IP less the IP and
    TCP (data offset) or UDP headers."""
    path = _pcap(tmp_path / "same.pcap", linktype, [Rec(T0, i, wrap(p)) for i, p in enumerate((A, B, C, D))])
    n = LENGTHS[length]
    _check(path, [flow(KEY_A, [_us(0), _us(1)], n[:2], [1, 0]), flow(KEY_C, [_us(2)], [n[2]], [1]),
                  flow(KEY_D, [_us(3)], [n[3]], [1])], length=length)


# --- link layers -----------------------------------------------------------------------------------


def test_vlan_qinq_and_mpls_stacks(tmp_path):
    """802.1Q, 802.1ad + 802.1Q, three tags (0x9100 outermost), two MPLS labels, MPLS with IPv6
    (version from the nibble after the bottom label), VLAN then MPLS: all IP, frame = IP + 14.
    Not IP: MPLS carrying Ethernet behind a control word, and an 802.3 frame (length field)
    with LLC/SNAP and IPv4 inside."""
    frames = [
        _ether(bytes(Dot1Q(vlan=10, type=0x0800)) + A, 0x8100),
        _ether(bytes(Dot1AD(vlan=100, type=0x8100) / Dot1Q(vlan=10, type=0x0800)) + B, 0x88A8),
        _ether(bytes(Dot1Q(vlan=1, type=0x8100) / Dot1Q(vlan=2, type=0x8100) / Dot1Q(vlan=3, type=0x0800)) + A, 0x9100),
        _ether(bytes(MPLS(label=16, s=0) / MPLS(label=17, s=1)) + A, 0x8847),
        _ether(bytes(MPLS(label=18, s=1)) + C, 0x8848),
        _ether(bytes(Dot1Q(vlan=5, type=0x8847) / MPLS(label=19, s=1)) + A, 0x8100),
        _ether(bytes(MPLS(label=20, s=1)) + bytes(4) + _ether(A), 0x8847),
        bytes(Dot3(dst=MAC_B, src=MAC_A) / LLC(dsap=0xAA, ssap=0xAA, ctrl=3) / SNAP(OUI=0, code=0x0800) / Raw(A)),
    ]
    path = _pcap(tmp_path / "stacks.pcap", 1, [Rec(T0, i, f) for i, f in enumerate(frames)])
    report = _check(path, [flow(KEY_A, [_us(0), _us(1), _us(2), _us(3), _us(5)], [FRAME_A, FRAME_B, FRAME_A, FRAME_A, FRAME_A],
                                [1, 0, 1, 1, 1]),
                           flow(KEY_C, [_us(4)], [FRAME_C], [1])])
    assert report.packets == 8 and report.not_ip == 2


def test_pppoe_session_over_ethernet(tmp_path):
    """PPPoE session (0x8864) with PPP 0x0021 (IPv4) and 0x0057 (IPv6); PPPoE discovery and
    LCP are not IP."""
    frames = [
        _ether(bytes(PPPoE(code=0, sessionid=0x11, len=2 + len(A))) + b"\x00\x21" + A, 0x8864),
        _ether(bytes(PPPoE(code=0, sessionid=0x11, len=2 + len(C))) + b"\x00\x57" + C, 0x8864),
        _ether(bytes(PPPoE(code=0x09, sessionid=0)), 0x8863),  # PADI
        _ether(bytes(PPPoE(code=0, sessionid=0x11, len=6)) + b"\xc0\x21" + bytes.fromhex("01010004"), 0x8864),
    ]
    path = _pcap(tmp_path / "pppoe.pcap", 1, [Rec(T0, i, f) for i, f in enumerate(frames)])
    report = _check(path, [flow(KEY_A, [_us(0)], [FRAME_A], [1]), flow(KEY_C, [_us(1)], [FRAME_C], [1])])
    assert report.not_ip == 2


def _radiotap(flags_fcs: bool = False) -> bytes:
    return bytes(RadioTap(present="Flags", Flags="FCS")) if flags_fcs else bytes(RadioTap())


def _dot11_data(subtype: int, fcfield: str, body: bytes, *, ht_control: bool = False) -> bytes:
    header = bytes(Dot11(type=2, subtype=subtype, FCfield=fcfield, addr1=MAC_B, addr2=MAC_A, addr3=MAC_B,
                         addr4=MAC_A if "to_DS" in fcfield and "from_DS" in fcfield else None))
    qos = bytes(Dot11QoS(TID=5)) if subtype & 8 else b""
    return header + qos + (bytes(4) if ht_control else b"") + body


def test_80211_radiotap_data_frames(tmp_path):
    """Radiotap + 802.11 data frames: QoS (+2), QoS with the Order bit (+2 +4 HT control),
    four addresses (+6), LLC/SNAP then an ethertype (VLAN walked as for Ethernet), a radiotap
    FCS flag with a 0 IP length. A protected frame (its body in clear LLC/SNAP + IPv4, so only
    the flag says no) and a beacon are not IP."""
    beacon = bytes(Dot11(type=0, subtype=8, addr1="ff:ff:ff:ff:ff:ff", addr2=MAC_A, addr3=MAC_A)
                   / Dot11Beacon() / Dot11Elt(ID=0, info=b"fedaux"))
    frames = [
        _radiotap() + _dot11_data(8, "from_DS", _snap(A)),
        _radiotap() + _dot11_data(8, "from_DS+order", _snap(B), ht_control=True),
        _radiotap() + _dot11_data(0, "to_DS+from_DS", _snap(C)),
        _radiotap() + _dot11_data(0, "to_DS+protected", bytes(8) + _snap(A)),
        _radiotap() + beacon,
        _radiotap(flags_fcs=True) + _with_fcs(_dot11_data(8, "to_DS", _snap(A_LEN0))),
        _radiotap() + _dot11_data(0, "to_DS", _snap(bytes(Dot1Q(vlan=7, type=0x0800)) + A, 0x8100)),
    ]
    path = _pcap(tmp_path / "wifi.pcap", 127, [Rec(T0, i, f) for i, f in enumerate(frames)])
    report = _check(path, [flow(KEY_A, [_us(0), _us(1), _us(5), _us(6)], [FRAME_A, FRAME_B, FRAME_A, FRAME_A], [1, 0, 1, 1]),
                           flow(KEY_C, [_us(2)], [FRAME_C], [1])])
    assert report.not_ip == 2


def test_80211_without_radiotap(tmp_path):
    """Link type 105: the same 802.11 rules with no radiotap header."""
    beacon = bytes(Dot11(type=0, subtype=8, addr1="ff:ff:ff:ff:ff:ff", addr2=MAC_A, addr3=MAC_A) / Dot11Beacon())
    frames = [_dot11_data(8, "from_DS", _snap(A)), beacon, _dot11_data(0, "to_DS", _snap(C))]
    path = _pcap(tmp_path / "wifi105.pcap", 105, [Rec(T0, i, f) for i, f in enumerate(frames)])
    _check(path, [flow(KEY_A, [_us(0)], [FRAME_A], [1]), flow(KEY_C, [_us(2)], [FRAME_C], [1])])


@pytest.mark.parametrize("linktype, wrap", [(113, _sll), (276, _sll2)], ids=["v1", "v2"])
def test_linux_cooked_captures(tmp_path, linktype, wrap):
    """Linux cooked v1 (protocol at bytes 14-15) and v2 (bytes 0-1); ARP is not IP."""
    arp = wrap(A)[:-len(A)].replace(b"\x08\x00", b"\x08\x06", 1) + bytes(28)
    path = _pcap(tmp_path / "cooked.pcap", linktype, [Rec(T0, 0, wrap(A)), Rec(T0, 1, arp), Rec(T0, 2, wrap(C))])
    report = _check(path, [flow(KEY_A, [_us(0)], [FRAME_A], [1]), flow(KEY_C, [_us(2)], [FRAME_C], [1])])
    assert report.not_ip == 1


@pytest.mark.parametrize("linktype, packets", [(228, [A, B]), (229, [C]), (101, [A, C]), (12, [A, C]), (14, [A, C])])
def test_raw_ip_link_types(tmp_path, linktype, packets):
    """Raw IPv4 (228), raw IPv6 (229), raw IP with the version from the first nibble (101, 12, 14)."""
    path = _pcap(tmp_path / "raw.pcap", linktype, [Rec(T0, i, p) for i, p in enumerate(packets)])
    expected = {228: [flow(KEY_A, [_us(0), _us(1)], [FRAME_A, FRAME_B], [1, 0])],
                229: [flow(KEY_C, [_us(0)], [FRAME_C], [1])]}.get(
        linktype, [flow(KEY_A, [_us(0)], [FRAME_A], [1]), flow(KEY_C, [_us(1)], [FRAME_C], [1])])
    _check(path, expected)


def test_bsd_loopback_in_both_byte_orders(tmp_path):
    """Link type 0: the 4-byte family in either byte order (2: IPv4; 24, 28, 30: IPv6); 7 (OSI) is not IP."""
    frames = [struct.pack("<I", 2) + A, struct.pack(">I", 2) + B, struct.pack("<I", 30) + C, struct.pack(">I", 24) + C,
              struct.pack("<I", 28) + C, struct.pack("<I", 7) + A]
    path = _pcap(tmp_path / "null.pcap", 0, [Rec(T0, i, f) for i, f in enumerate(frames)])
    report = _check(path, [flow(KEY_A, [_us(0), _us(1)], [FRAME_A, FRAME_B], [1, 0]),
                           flow(KEY_C, [_us(2), _us(3), _us(4)], [FRAME_C] * 3, [1, 1, 1])])
    assert report.not_ip == 1


def test_openbsd_loopback_is_network_order(tmp_path):
    """Link type 108: the family in network byte order only; a little-endian 2 is not IPv4 there."""
    frames = [struct.pack(">I", 2) + A, struct.pack(">I", 24) + C, struct.pack("<I", 2) + B]
    path = _pcap(tmp_path / "loop.pcap", 108, [Rec(T0, i, f) for i, f in enumerate(frames)])
    report = _check(path, [flow(KEY_A, [_us(0)], [FRAME_A], [1]), flow(KEY_C, [_us(1)], [FRAME_C], [1])])
    assert report.not_ip == 1


@pytest.mark.parametrize("linktype", [9, 50])
def test_ppp_with_and_without_hdlc_framing(tmp_path, linktype):
    """PPP (9) and PPP in HDLC framing (50): optional ff 03, then the protocol (0x0021 IPv4,
    0x0057 IPv6); LCP is not IP. (A 1-byte compressed protocol field is left out: the contract
    does not say.)"""
    frames = [b"\xff\x03\x00\x21" + A, b"\x00\x57" + C, b"\xff\x03\xc0\x21" + bytes.fromhex("01010004")]
    path = _pcap(tmp_path / "ppp.pcap", linktype, [Rec(T0, i, f) for i, f in enumerate(frames)])
    report = _check(path, [flow(KEY_A, [_us(0)], [FRAME_A], [1]), flow(KEY_C, [_us(1)], [FRAME_C], [1])])
    assert report.not_ip == 1


def test_pppoe_without_ethernet(tmp_path):
    """Link type 51: a 6-byte PPPoE header, then the PPP protocol."""
    frames = [bytes(PPPoE(code=0, sessionid=1, len=2 + len(p))) + proto + p for proto, p in ((b"\x00\x21", A), (b"\x00\x57", C))]
    path = _pcap(tmp_path / "pppoe51.pcap", 51, [Rec(T0, i, f) for i, f in enumerate(frames)])
    _check(path, [flow(KEY_A, [_us(0)], [FRAME_A], [1]), flow(KEY_C, [_us(1)], [FRAME_C], [1])])


def test_cisco_hdlc(tmp_path):
    """Link type 104: address, control, ethertype; SLARP (0x8035) is not IP."""
    frames = [bytes(CHDLC(address=0x0F, control=0, proto=0x0800)) + A, bytes(CHDLC(address=0x8F, control=0, proto=0x86DD)) + C,
              bytes(CHDLC(address=0x8F, control=0, proto=0x8035)) + bytes(20)]
    path = _pcap(tmp_path / "chdlc.pcap", 104, [Rec(T0, i, f) for i, f in enumerate(frames)])
    report = _check(path, [flow(KEY_A, [_us(0)], [FRAME_A], [1]), flow(KEY_C, [_us(1)], [FRAME_C], [1])])
    assert report.not_ip == 1


def test_an_unsupported_link_type_is_refused_in_one_line(tmp_path):
    """Link type 147 (user 0): refused in one line naming the file and the link type."""
    path = _pcap(tmp_path / "user0.pcap", 147, [Rec(T0, 0, A)])
    with pytest.raises(FlowFormatError) as refused:
        capture_flows(path)
    _assert_one_line_naming(refused.value, path, "147")
    with pytest.raises(ReferenceRefused, match="link type 147"):
        reference_flows(path)


# --- IP and transport ------------------------------------------------------------------------------

E1 = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(offset=0, m=1, id=7)
           / UDP(sport=6000, dport=7000) / Raw(bytes(100)))  # IP 40 + 8 + 8 + 8 + 100 = 164
E2 = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(offset=14, m=0, id=7, nh=17)
           / Raw(bytes(50)))  # a later fragment: no ports
E3 = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting(addresses=["2001:db8::9"])
           / TCP(sport=6001, dport=80))  # IP 40 + 8 + 24 + 20 = 92
AH_UDP = struct.pack("!BBHII", 17, 4, 0, 0x100, 1) + bytes(12) + bytes(UDP(sport=6002, dport=7002) / Raw(bytes(10)))
E4 = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2", nh=51) / Raw(AH_UDP))  # IP 40 + 24 (AH) + 8 + 10 = 82
F1 = bytes(IP(src="10.0.0.5", dst="10.0.0.6", flags="MF", frag=0) / UDP(sport=6003, dport=53) / Raw(bytes(100)))  # IP 128
F2 = bytes(IP(src="10.0.0.5", dst="10.0.0.6", frag=16, proto=17) / Raw(bytes(60)))  # a later fragment


@pytest.mark.parametrize("length, sizes", [("frame", [178, 106, 96, 142]), ("payload", [100, 0, 10, 100])])
def test_ipv6_extension_headers_and_fragments(tmp_path, length, sizes):
    """Hop-by-hop + fragment (first fragment: counted with its ports), destination options +
    routing, AH: walked to the transport. Later IPv6 and IPv4 fragments are neither TCP nor UDP."""
    path = _pcap(tmp_path / "ext.pcap", 1, [Rec(T0, i, _ether(p)) for i, p in enumerate((E1, E2, E3, E4, F1, F2))])
    report = _check(path, [flow(("udp", "2001:db8::1", 6000, "2001:db8::2", 7000), [_us(0)], [sizes[0]], [1]),
                           flow(("tcp", "2001:db8::1", 6001, "2001:db8::2", 80), [_us(2)], [sizes[1]], [1]),
                           flow(("udp", "2001:db8::1", 6002, "2001:db8::2", 7002), [_us(3)], [sizes[2]], [1]),
                           flow(("udp", "10.0.0.5", 6003, "10.0.0.6", 53), [_us(4)], [sizes[3]], [1])], length=length)
    assert report.not_tcp_udp == 2


def test_only_the_outermost_ip_header_and_its_transport_count(tmp_path):
    """ICMP quoting a UDP header, IP-in-IP, GRE, 6in4 and SCTP are neither TCP nor UDP; VXLAN is
    its outer UDP flow, with the outer length."""
    outer = IP(src="192.0.2.1", dst="192.0.2.2")
    packets = [
        bytes(IP(src="10.0.0.2", dst="10.0.0.1") / ICMP(type=3, code=3) / Raw(A[:28])),
        bytes(IP(src="192.0.2.1", dst="192.0.2.2", proto=4) / Raw(A)),
        bytes(outer / GRE(proto=0x0800) / Raw(A)),
        bytes(IP(src="192.0.2.1", dst="192.0.2.2", proto=41) / Raw(C)),
        bytes(outer / SCTP(sport=5000, dport=5001)),
        bytes(outer / UDP(sport=49152, dport=4789) / VXLAN(vni=5) / Ether(dst=MAC_B, src=MAC_A) / Raw(A)),  # IP 98
    ]
    path = _pcap(tmp_path / "tunnels.pcap", 1, [Rec(T0, i, _ether(p)) for i, p in enumerate(packets)])
    report = _check(path, [flow(("udp", "192.0.2.1", 49152, "192.0.2.2", 4789), [_us(5)], [112], [1])])
    assert report.not_tcp_udp == 5


def test_a_packet_cut_before_its_ports_is_undecodable(tmp_path):
    """Cut inside the UDP ports or inside the IP header: undecodable. Cut after the ports,
    inside the TCP header: counted, its length from the IP header."""
    records = [
        Rec(T0, 0, _ether(A)[:14 + 20 + 2], wirelen=FRAME_A),
        Rec(T0, 1, _ether(C)[:14 + 40 + 4], wirelen=FRAME_C),
        Rec(T0, 2, _ether(A)[:14 + 10], wirelen=FRAME_A),
    ]
    path = _pcap(tmp_path / "cut_headers.pcap", 1, records)
    report = _check(path, [flow(KEY_C, [_us(1)], [FRAME_C], [1])])
    assert report.undecodable == 2


# --- real captures ---------------------------------------------------------------------------------


def _needs(folder: Path) -> Path:
    if not folder.is_dir():
        pytest.skip(f"{folder} is not beside this checkout")
    return folder


@pytest.mark.parametrize("length", ["frame", "ip", "payload"])
@pytest.mark.parametrize("name", sorted(p.name for p in ZEEK.glob("*.pcap*")) if ZEEK.is_dir() else ["zeek"])
def test_zeek_captures_match_the_reference(name, length):
    """Every Zeek capture: the same flows, packets, µs and lengths as the reference."""
    path = _needs(ZEEK) / name
    reference_report, report = ReferenceReport(), CaptureReport()
    expected = reference_flows(path, length=length, report=reference_report)
    got = capture_flows(path, length=length, report=report)
    assert first_difference(got, expected) is None, f"{name}: {first_difference(got, expected)}"
    assert report.packets == reference_report.packets


DAMAGE_WORDS = re.compile(r"damaged|truncated|corrupt|malformed|broken|invalid", re.IGNORECASE)


class Verdict(NamedTuple):
    category: str  # for the tally
    problem: str | None  # None: conforms


def corpus_verdict(path: Path, read: Callable[[Path], list[dict[str, Any]]] = capture_flows) -> Verdict:
    """fedaux's reading of one real capture judged against the reference.

    Read: the flows must equal the reference's. Refused (one line naming the file): fine when the
    reference refuses too, finds no TCP or UDP flow (the contract says nothing of empty files),
    or the file is structurally odd and fedaux says it is damaged. A file the reference refuses
    for its link type or a simple packet block must be refused; one it refuses as damaged or
    unreadable by scapy cannot be checked.
    """
    name = path.name
    reference_report = ReferenceReport()
    try:
        expected: list | None = reference_flows(path, report=reference_report)
        refusal = None
    except ReferenceRefused as refused:
        expected, refusal = None, refused
    try:
        got = read(path)
    except FlowFormatError as refused:
        message = str(refused)
        if "\n" in message or name not in message:
            return Verdict("refused, badly worded", f"{name}: a refusal is one line naming the file: {message!r}")
        if refusal is not None:
            if refusal.kind == "link type" and str(refusal.linktype) not in message:
                return Verdict("refused, badly worded", f"{name}: the refusal does not name link type {refusal.linktype}: {message}")
            return Verdict(f"refused: {refusal.kind}", None)
        if not expected:
            return Verdict("refused: no TCP/UDP flow", None)
        if reference_report.anomalies and DAMAGE_WORDS.search(message):
            return Verdict("refused: damaged", None)
        return Verdict("refused, the reference reads flows", f"{name}: refused ({message}) but the reference reads {len(expected)} flow(s)")
    except Exception as error:  # anything else is a crash, whatever the file holds
        return Verdict("crashed", f"{name}: {type(error).__name__}: {error}")
    if refusal is not None:
        if refusal.kind in ("link type", "no time"):
            return Verdict("read, should be refused", f"{name}: read, but the contract refuses it ({refusal})")
        return Verdict(f"read, unchecked (reference: {refusal.kind})", None)
    difference = first_difference(got, expected)
    if difference:
        return Verdict("read, differs from the reference", f"{name}: {difference}")
    return Verdict("read, same flows" if expected else "read, no TCP/UDP flow", None)


def _link_label(path: Path) -> str:
    """``pcap 1``, ``pcap 1+FCS bits``, ``pcapng 113``: a file's container and link type(s)."""
    container, types = link_types(path)
    return f"{container} " + ",".join(f"{t & 0xFFFF}" + ("+FCS bits" if t >> 16 else "") for t in types)


def _corpus_files() -> list[Path]:
    return sorted(p for p in _needs(TCPDUMP).iterdir() if p.name != "LICENSE")


def _assert_corpus(paths: list[Path]) -> None:
    started = time.perf_counter()
    verdicts = {p.name: corpus_verdict(p) for p in paths}
    tally = collections.Counter(v.category for v in verdicts.values())
    problems = [v.problem for v in verdicts.values() if v.problem]
    summary = (f"{len(paths)} files in {time.perf_counter() - started:.1f} s: "
               + ", ".join(f"{n} {category}" for category, n in tally.most_common()))
    by_link = collections.Counter((_link_label(p), verdicts[p.name].category) for p in paths)
    print(summary, *(f"  {link}: {n} {category}" for (link, category), n in sorted(by_link.items())), sep="\n")
    assert not problems, f"{len(problems)} of {summary}\n" + "\n".join(problems[:40])


def test_the_whole_tcpdump_corpus_is_read_like_the_reference_or_refused_clearly():
    """All 830 captures of tcpdump's tests (real and fuzzed): each read with the reference's
    flows, or refused in one line for a reason the contract gives (about 10 s with scapy)."""
    _assert_corpus(_corpus_files())
