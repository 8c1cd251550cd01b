"""Packet captures (pcap, pcapng) as flows, read with dpkt.

``data.root`` may name one capture file (its flows form one class, named after the file) or a folder
with one sub-folder of captures per class (the class is the folder name, as for text flows). A flow
is a bidirectional 5-tuple (TCP or UDP, over IPv4 or IPv6); a packet's direction is 1 when it
travels like the flow's first packet and 0 otherwise; a flow ends after
``data.capture.idle_timeout_s`` of silence. ``data.capture.filter`` keeps matching flows
(:mod:`fedaux.data.flow_filter`). Timestamps are kept to the microsecond.

``data.capture.length`` chooses what a packet's length counts: ``frame`` (the link-layer header
plus the IP packet, as in the UC Davis files; computed from the IP header's length field, so a
capture cut at a short snap length still gives full lengths), ``ip`` (the IP total length) or
``payload`` (the TCP or UDP payload). The store records which.

Why dpkt: it reads pcap and pcapng and decodes Ethernet (with VLAN tags), Linux cooked capture,
loopback and raw-IP link layers, IPv4/IPv6 with extension headers, TCP and UDP, in pure Python
with no system library, and is maintained. NFStream (a C flow meter) is faster but gives packet
times in milliseconds and per-packet detail for at most the first 255 packets of a flow; scapy
decodes the same layers several times slower; tshark needs a system package.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dpkt
import numpy as np

from fedaux.data.flow_filter import FlowKey, compile_filter
from fedaux.data.flows import PACKET_LENGTHS, FlowCollection
from fedaux.data.formats import FLOW_READERS, FlowReader
from fedaux.data.reader import FlowFormatError, _natural_key
from fedaux.errors import ConfigError

log = logging.getLogger(__name__)

PCAP_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"

# Link types (LINKTYPE_* of pcap and pcapng) and the bytes their header adds before the IP packet.
ETHERNET, NULL, RAW, RAW_BSD, RAW_LINKTYPE, LOOP, LINUX_SLL, RAW4, RAW6 = 1, 0, 12, 14, 101, 108, 113, 228, 229
LINK_NAMES = {ETHERNET: "Ethernet", NULL: "BSD loopback", LOOP: "OpenBSD loopback", LINUX_SLL: "Linux cooked (SLL)",
              RAW: "raw IP", RAW_BSD: "raw IP", RAW_LINKTYPE: "raw IP", RAW4: "raw IPv4", RAW6: "raw IPv6"}


def capture_kind(path: Path) -> str | None:
    """``"pcap"``, ``"pcapng"`` or None, from the file's first four bytes."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError:
        return None
    return "pcap" if magic in PCAP_MAGICS else "pcapng" if magic == PCAPNG_MAGIC else None


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
    not_ip: int = 0  # ARP, LLDP, ...
    not_tcp_udp: int = 0  # ICMP, IPv4 fragments after the first, ...
    undecodable: int = 0  # damaged or truncated headers
    filtered_flows: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.packets:,} packets: {self.not_ip} not IP, {self.not_tcp_udp} neither TCP nor UDP, "
                f"{self.undecodable} undecodable; {self.filtered_flows} flow(s) left out by the filter")


@dataclass
class _Packets:
    """Per-packet columns of one capture, in file order."""

    time_us: list[int] = field(default_factory=list)
    key: list[int] = field(default_factory=list)  # index into ``keys``
    forward: list[int] = field(default_factory=list)  # 1: sent by the key's first endpoint
    length: list[int] = field(default_factory=list)
    keys: dict[tuple, int] = field(default_factory=dict)  # (proto, family, addr a, port a, addr b, port b), a <= b


def _open(path: Path, handle) -> Any:
    kind = capture_kind(path)
    try:
        return dpkt.pcapng.Reader(handle) if kind == "pcapng" else dpkt.pcap.Reader(handle)
    except (ValueError, dpkt.UnpackError, dpkt.NeedData) as err:
        raise FlowFormatError(f"{path}: not a readable {kind} capture ({err})") from None


def _ip_layer(linktype: int, buf: bytes) -> tuple[Any, int]:
    """The IP packet of a frame and the bytes of link-layer header in front of it."""
    if linktype == ETHERNET:
        eth = dpkt.ethernet.Ethernet(buf)
        return eth.data, 14 + 4 * len(getattr(eth, "vlan_tags", ()) or ()) + 4 * len(getattr(eth, "mpls_labels", ()) or ())
    if linktype == LINUX_SLL:
        return dpkt.sll.SLL(buf).data, 16
    if linktype in (NULL, LOOP):
        return dpkt.loopback.Loopback(buf).data, 4
    version = buf[0] >> 4 if buf else 0
    if linktype == RAW6 or version == 6:
        return dpkt.ip6.IP6(buf), 0
    return dpkt.ip.IP(buf), 0


def _read_packets(path: Path, length: str, report: CaptureReport) -> _Packets:
    packets = _Packets()
    times, keys_col, forward, lengths, keys = packets.time_us, packets.key, packets.forward, packets.length, packets.keys
    ip4, ip6, tcp, udp = dpkt.ip.IP, dpkt.ip6.IP6, dpkt.tcp.TCP, dpkt.udp.UDP
    number = 0
    with open(path, "rb") as handle:
        reader = _open(path, handle)
        linktype = reader.datalink()
        if linktype not in LINK_NAMES:
            raise FlowFormatError(
                f"{path}: link type {linktype} is not supported; supported: "
                + ", ".join(sorted({f"{name} ({k})" for k, name in LINK_NAMES.items()}))
            )
        records: Iterator = iter(reader)
        last_record, last_size = -1, 0
        while True:
            position = handle.tell()
            try:
                ts, buf = next(records)
            except StopIteration:
                break
            except (dpkt.NeedData, dpkt.UnpackError, ValueError, OSError) as err:
                raise FlowFormatError(f"{path}: truncated or damaged capture at packet {number + 1} ({err})") from None
            number += 1
            last_record, last_size = position, len(buf)
            try:
                ip, link_bytes = _ip_layer(linktype, buf)
            except (dpkt.UnpackError, dpkt.NeedData, IndexError, ValueError):
                report.undecodable += 1
                continue
            if isinstance(ip, ip4):
                ip_length, family = ip.len, socket.AF_INET
            elif isinstance(ip, ip6):
                ip_length, family = 40 + ip.plen, socket.AF_INET6
            else:
                report.not_ip += 1
                continue
            segment = ip.data
            if isinstance(segment, tcp):
                proto = "tcp"
            elif isinstance(segment, udp):
                proto = "udp"
            else:  # ICMP, IPv4 fragments after the first (no ports), ...
                report.not_tcp_udp += 1
                continue
            if length == "frame":
                size = link_bytes + ip_length
            elif length == "ip":
                size = ip_length
            else:  # transport payload; behind IPv6 extension headers a TCP payload counts them too
                header = ip.hl * 4 if family == socket.AF_INET else ip_length - ip.plen
                size = (segment.ulen - 8) if proto == "udp" else ip_length - header - segment.off * 4
            a, b = (ip.src, segment.sport), (ip.dst, segment.dport)
            ends = (proto, family, *a, *b) if a <= b else (proto, family, *b, *a)
            index = keys.get(ends)
            if index is None:
                index = keys[ends] = len(keys)
            times.append(round(ts * 1000000))
            keys_col.append(index)
            forward.append(1 if a <= b else 0)
            lengths.append(size)
        if capture_kind(path) == "pcap" and last_record >= 0:
            _check_last_record(path, handle, last_record, last_size, number)
    report.packets += number
    return packets


def _check_last_record(path: Path, handle, position: int, size: int, number: int) -> None:
    """dpkt's pcap reader returns a last packet cut short by a truncated file without a word: compare
    its bytes with the length its record header promises."""
    handle.seek(0)
    little = handle.read(4) in (PCAP_MAGICS[0], PCAP_MAGICS[2])
    handle.seek(position)
    header = (dpkt.pcap.LEPktHdr if little else dpkt.pcap.PktHdr)(handle.read(16))
    if header.caplen != size:
        raise FlowFormatError(f"{path}: truncated capture: packet {number} has {size} of its {header.caplen} bytes")


def capture_flows(path: Path, *, idle_timeout_s: float = 60.0, flow_filter: str = "", length: str = "frame",
                  report: CaptureReport | None = None) -> list[dict[str, Any]]:
    """The flows of one capture file, in order of their first packet.

    Returns one dict per flow: ``key`` (:class:`~fedaux.data.flow_filter.FlowKey`, ``src`` the
    first packet's sender), ``start_us`` (unix microseconds), ``time_us`` ``(n,)`` int64,
    ``lengths`` ``(n,)`` int64 and ``directions`` ``(n,)`` uint8.
    """
    if length not in PACKET_LENGTHS:
        raise ConfigError(f"data.capture.length={length!r} is not valid; choose one of {list(PACKET_LENGTHS)}")
    keep = compile_filter(flow_filter)
    report = report if report is not None else CaptureReport()
    packets = _read_packets(path, length, report)
    if not packets.time_us:
        raise FlowFormatError(f"{path}: no TCP or UDP packets over IP ({report.summary()})")
    time_us = np.asarray(packets.time_us, dtype=np.int64)
    key = np.asarray(packets.key, dtype=np.int64)
    forward = np.asarray(packets.forward, dtype=np.uint8)
    sizes = np.asarray(packets.length, dtype=np.int64)
    # Group each 5-tuple's packets in file order, then cut a new flow after an idle gap.
    order = np.lexsort((np.arange(len(key)), key))
    k, t = key[order], time_us[order]
    new_flow = np.ones(len(order), dtype=bool)
    new_flow[1:] = (k[1:] != k[:-1]) | (np.diff(t) > int(idle_timeout_s * 1e6))
    starts = np.flatnonzero(new_flow)
    bounds = np.append(starts, len(order))
    by_key = {index: ends for ends, index in packets.keys.items()}
    flows = []
    for f in np.argsort(order[starts], kind="stable"):  # flows in order of their first packet in the file
        rows = order[bounds[f]:bounds[f + 1]]
        first_forward = forward[rows[0]]
        proto, family, a, pa, b, pb = by_key[int(k[bounds[f]])]
        src, sport, dst, dport = (a, pa, b, pb) if first_forward else (b, pb, a, pa)
        flow_key = FlowKey(proto, socket.inet_ntop(family, src), sport, socket.inet_ntop(family, dst), dport)
        if not keep(flow_key):
            report.filtered_flows += 1
            continue
        flows.append({"key": flow_key, "start_us": int(time_us[rows[0]]), "time_us": time_us[rows],
                      "lengths": sizes[rows], "directions": (forward[rows] == first_forward).astype(np.uint8)})
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
        raise FlowFormatError(f"{root}: a packet of {all_lengths.max()} bytes does not fit the store (max 65535)")
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
