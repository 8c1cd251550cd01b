"""Flows from packet captures and CertTA JSON, checked against the text reader and against
an independent parser (scapy), and every kind of bad input answered with one clear line."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedaux.config import load_config
from fedaux.data.capture import read_captures, write_captures
from fedaux.data.flows import FlowCollection
from fedaux.data.reader import FlowFormatError, read_raw_folder
from fedaux.data.sources import detect_format, load_flows
from tests.conftest import REPO

SHARED = REPO.parent / "shared" / "data"
ZEEK = SHARED / "pcaps" / "zeek"
TCPDUMP = SHARED / "pcaps" / "tcpdump"
CERTTA = SHARED / "certta-cicdoh20"


def _needs(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not beside this checkout")
    return path


def _canonical(flows: FlowCollection) -> FlowCollection:
    """Flows ordered by class, then start time (the readers order them differently)."""
    return flows.select(np.lexsort((np.rint(flows.unix_start * 1e6), flows.labels)))


def _assert_same_flows(text: FlowCollection, capture: FlowCollection) -> None:
    a, b = _canonical(text), _canonical(capture)
    assert a.class_names == b.class_names
    assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.offsets, b.offsets)
    assert np.array_equal(np.rint(a.unix_start * 1e6), np.rint(b.unix_start * 1e6))  # starts to the microsecond
    inner = np.ones(a.num_packets, dtype=bool)
    inner[a.offsets[:-1]] = False  # a flow's first gap: its relative start in a text file, 0 in a capture
    assert np.array_equal(a.iat_us[inner], b.iat_us[inner])  # every gap to the microsecond, reorderings kept
    assert np.array_equal(a.lengths, b.lengths)
    assert np.array_equal(a.directions, b.directions)
    assert a.packet_length == b.packet_length == "frame"


def test_text_flows_written_as_captures_read_back_the_same(shared_raw, tmp_path):
    """Three flows per class of the real UC Davis flows (all 150 in the slow suite)."""
    text, _ = read_raw_folder(shared_raw)
    subset = text.select([i for c in range(len(text.class_names)) for i in np.flatnonzero(text.labels == c)[:3]])
    write_captures(subset, tmp_path / "captures", snaplen=96)
    assert detect_format(tmp_path / "captures") == "capture"
    back, skipped = load_flows(tmp_path / "captures")
    assert not skipped
    _assert_same_flows(subset, back)


@pytest.mark.slow
def test_all_150_text_flows_round_trip_through_captures(shared_raw, tmp_path):
    text, _ = read_raw_folder(shared_raw)
    write_captures(text, tmp_path / "captures", snaplen=96)
    back, _ = read_captures(tmp_path / "captures")
    assert back.num_packets == 1_069_596
    _assert_same_flows(text, back)


def _scapy_flow_count(path: Path, idle_timeout_s: float = 60.0) -> int:
    """Bidirectional TCP/UDP 5-tuple flows with an idle timeout, counted with scapy (not dpkt)."""
    import scapy.layers.ppp  # noqa: F401  (registers PPP, link type 9, with scapy's readers)
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.utils import rdpcap

    last_seen: dict[tuple, float] = {}
    flows = 0
    for packet in rdpcap(str(path)):
        ip = packet.getlayer(IP) or packet.getlayer(IPv6)
        segment = packet.getlayer(TCP) or packet.getlayer(UDP)
        if ip is None or segment is None:
            continue
        ends = sorted([(ip.src, segment.sport), (ip.dst, segment.dport)])
        key = (type(segment).__name__, *ends[0], *ends[1])
        time = float(packet.time)
        if key not in last_seen or time - last_seen[key] > idle_timeout_s:
            flows += 1
        last_seen[key] = time
    return flows


@pytest.mark.parametrize("name", sorted(p.name for p in ZEEK.glob("*.pcap*")) if ZEEK.is_dir() else [])
def test_every_zeek_capture_is_read_or_refused_clearly(name):
    path = _needs(ZEEK / name)  # handshake.pcap is PPP (link type 9)
    flows, _ = read_captures(path)
    assert flows.num_flows == _scapy_flow_count(path)
    assert flows.class_names == (path.stem,) and flows.packet_length == "frame"
    assert set(flows.flow_groups) == {path.name}
    assert all(flows.directions[flows.offsets[:-1]] == 1)  # the first packet sets the direction


@pytest.mark.parametrize("length", ["frame", "payload"])
def test_the_vectorised_decoder_changes_nothing(length):
    """Every packet of the Zeek and tcpdump captures sent through the per-packet decoder gives the
    same flows, times, lengths and counts as the numpy path that decodes the common packets."""
    from fedaux.data.capture import CaptureReport, capture_flows

    files = sorted(_needs(ZEEK).glob("*.pcap*")) + sorted(_needs(TCPDUMP).glob("*.pcap*"))
    compared = 0
    for path in files:
        results = []
        for vectorised in (True, False):
            report = CaptureReport()
            try:
                flows = capture_flows(path, length=length, report=report, vectorised=vectorised)
            except FlowFormatError as err:
                flows = str(err)  # type: ignore[assignment]
            results.append((flows, report))
        (fast, fast_report), (slow, slow_report) = results
        assert fast_report == slow_report, path.name
        if isinstance(fast, str) or isinstance(slow, str):
            assert fast == slow, path.name
            continue
        assert [f["key"] for f in fast] == [f["key"] for f in slow], path.name
        for a, b in zip(fast, slow):
            for column in ("time_us", "lengths", "directions"):
                assert np.array_equal(a[column], b[column]), (path.name, a["key"], column)
        compared += 1
    assert compared > 300  # the corpus's readable captures, not a vacuous pass


def test_zeek_counts_are_what_the_files_hold():
    _needs(ZEEK)
    counts = {p.name: read_captures(p)[0].num_flows for p in ZEEK.glob("*.pcap*")}
    assert counts["google-cert-repeat.pcap"] == 8  # the README's "8 TLS-over-TCP flows to Google"
    assert counts["merlinc2_Zeek_example.pcapng"] >= 1  # pcapng


def test_filter_length_and_folder_per_class(tmp_path):
    _needs(ZEEK)
    root = tmp_path / "captures"
    for cls, files in {"quic": ["quic_win11_firefox_google.pcap", "curl-8.1.2-dev-http3-www-google-de.pcap"],
                       "tls": ["google-cert-repeat.pcap"]}.items():
        (root / cls).mkdir(parents=True)
        for f in files:
            shutil.copy(ZEEK / f, root / cls / f)
    cfg = load_config(None, [f"data.root={root}"])
    every, _ = load_flows(root, cfg.data)
    assert every.class_names == ("quic", "tls") and np.bincount(every.labels).tolist() == [2, 8]
    quic_only, _ = load_flows(root, load_config(None, ["data.capture.filter=udp port 443"]).data)
    assert quic_only.num_flows == 2
    # IP lengths are the Ethernet frame lengths less the 14-byte header, packet by packet.
    ip, _ = load_flows(root, load_config(None, ["data.capture.length=ip"]).data)
    assert ip.packet_length == "ip" and np.array_equal(every.lengths.astype(int) - 14, ip.lengths.astype(int))
    payload, _ = load_flows(root, load_config(None, ["data.capture.length=payload"]).data)
    assert (payload.lengths < ip.lengths).all()
    # A store keeps which quantity it holds.
    ip.save(tmp_path / "ip.npz")
    assert FlowCollection.load(tmp_path / "ip.npz").packet_length == "ip"
    # An idle timeout shorter than the flows' pauses cuts them into more flows.
    cut, _ = load_flows(root, load_config(None, ["data.capture.idle_timeout_s=0.5"]).data)
    assert cut.num_flows > every.num_flows


def test_certta_json_flows_keep_captures_on_one_side_of_the_split():
    from fedaux.data.samples import build_federated_data

    cfg = load_config(REPO / "conf" / "cicdoh20.yaml")
    data = build_federated_data(cfg.data, 10, 2, seed=0)
    assert data.flows.num_flows == 1200 and data.flows.packet_length == "ip"
    groups = np.asarray(data.flows.flow_groups)
    assert not set(groups[data.train_flows]) & set(groups[data.test_flows])
    assert set(data.flows.labels[data.test_flows]) == {0, 1, 2, 3}  # every class is tested
    if CERTTA.is_dir():  # the shipped store is the shared JSON, read again
        fresh, _ = load_flows(CERTTA)
        assert fresh.checksum() == data.flows.checksum()


def _write(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    import dpkt

    good = _needs(ZEEK / "curl-8.1.2-dev-http3-www-google-de.pcap").read_bytes()
    arp = tmp_path / "arp.pcap"
    with open(arp, "wb") as handle:
        writer = dpkt.pcap.Writer(handle)
        frame = dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_ARP, data=dpkt.arp.ARP())
        for i in range(3):
            writer.writepkt(bytes(frame), ts=1.0 + i)
    user0 = tmp_path / "user0.pcap"  # link type 147: a private link layer, nothing to decode
    with open(user0, "wb") as handle:
        dpkt.pcap.Writer(handle, linktype=147).writepkt(b"\x00" * 40, ts=1.0)
    flow = {"timestamp": [0.0, 0.1], "direction_length": [60, -1500], "label": 0}
    return {
        "truncated": (_write(tmp_path / "cut.pcap", good[:5000]), r"cut.pcap: truncated (or damaged )?capture(:| at) packet \d+"),
        "link type": (user0, r"user0.pcap: link type 147 \(user 0\) is not supported; supported: .*1 \(Ethernet\)"),
        "no ip": (arp, r"arp.pcap: no TCP or UDP packets over IP \(3 packets: 3 not IP"),
        "empty class": (tmp_path / "classes", r"classes/empty: class folder has no captures"),
        "malformed json": (_write(tmp_path / "bad.json", '[{"timestamp": [0.0], "direction_length": [1'),
                           r"bad.json:1:\d+: malformed JSON"),
        "lengths differ": (_write(tmp_path / "short.json", json.dumps([{**flow, "timestamp": [0.0]}])),
                           r"short.json: flow 0: timestamp has 1 entries but direction_length 2"),
        "time back": (_write(tmp_path / "back.json", json.dumps([flow, {**flow, "timestamp": [0.2, 0.1]}])),
                      r"back.json: flow 1, packet 2: time goes back from 0.2 s to 0.1 s"),
    }


@pytest.mark.parametrize("case", ["truncated", "link type", "no ip", "empty class", "malformed json", "lengths differ",
                                  "time back"])
def test_bad_input_is_one_line_naming_the_file(tmp_path, case):
    inputs = _bad_inputs(tmp_path)
    shutil.copy(ZEEK / "curl-8.1.2-dev-http3-www-google-de.pcap", _write(tmp_path / "classes" / "quic" / "a.pcap", b"").parent)
    (tmp_path / "classes" / "empty").mkdir()
    _write(tmp_path / "classes" / "empty" / "notes.txt", "not a capture")
    path, message = inputs[case]
    proc = subprocess.run([sys.executable, "-m", "fedaux.cli_data", "info", "--data", str(path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert re.search(message, proc.stderr), proc.stderr


def test_no_flow_left_after_the_filter_and_skipping_bad_captures(tmp_path):
    _needs(ZEEK)
    with pytest.raises(FlowFormatError, match=r"no flow left \(filter 'udp port 443'.*8 flow\(s\) left out by the filter"):
        read_captures(ZEEK / "google-cert-repeat.pcap", flow_filter="udp port 443")
    root = tmp_path / "classes" / "mixed"
    root.mkdir(parents=True)
    shutil.copy(ZEEK / "google-cert-repeat.pcap", root)
    (root / "cut.pcap").write_bytes((ZEEK / "handshake.pcap").read_bytes()[:300])
    flows, skipped = read_captures(tmp_path / "classes", on_bad_flow="skip")
    assert flows.num_flows == 8 and len(skipped) == 1 and "cut.pcap: truncated capture" in skipped[0]


def test_a_run_records_the_packet_length_quantity(tmp_path):
    from fedaux.train import run

    cfg = load_config(REPO / "conf" / "cicdoh20.yaml", [
        f"output_dir={tmp_path}", "federated.rounds=1", "federated.base_stations=2", "federated.edge_servers=1",
        "data.subflows_per_flow=2", "logging.progress=false", "logging.energy=false", "logging.plots=false",
        "logging.wandb.mode=disabled"])
    result = run(cfg)
    data = json.loads((result.run_dir / "data.json").read_text())
    assert data["packet_length"] == "ip" and data["class_names"]["traffic_class"] == ["Benign", "DNS2TCP", "DNSCat2",
                                                                                     "Iodine"]
    assert data["features"] == ["iat", "signed_length", "elapsed"] and data["packets"] == 60
    assert result.summary["packet_length"] == "ip"


def test_from_a_capture_folder_to_a_trained_model(tmp_path):
    """The README's "Your own traffic" commands: info, build with a filter, train on the store."""
    _needs(ZEEK)
    root = tmp_path / "captures"
    for cls, files in {"quic": ["quic_win11_firefox_google.pcap", "chromium-115.0.5790.110-google-de-fragmented.pcap",
                                "firefox-102.13.0esr-blog-cloudflare-com.pcap", "curl-8.1.2-dev-http3-www-google-de.pcap"],
                       "tls": ["google-cert-repeat.pcap"]}.items():
        (root / cls).mkdir(parents=True)
        for f in files:
            shutil.copy(ZEEK / f, root / cls / f)
    common = [sys.executable, "-m", "fedaux.cli_data"]
    info = subprocess.run([*common, "info", "--data", str(root), "data.capture.filter=tcp or udp port 443"],
                          capture_output=True, text=True, timeout=300)
    assert info.returncode == 0, info.stderr
    assert "12 flows, 2 classes, 2,130 packets (frame lengths), 5 capture group(s)" in info.stdout
    store = tmp_path / "mine.npz"
    build = subprocess.run([*common, "build", "--raw", str(root), "--out", str(store), "data.capture.filter=udp port 443"],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    assert FlowCollection.load(store).num_flows == 4  # the TLS class's flows are all TCP: filtered out
    from fedaux.train import run

    cfg = load_config(REPO / "conf" / "quic.yaml", [
        f"data.root={root}", "data.split_by=flow", f"output_dir={tmp_path / 'out'}", "federated.rounds=1",
        "federated.base_stations=2", "federated.edge_servers=1", "data.subflows_per_flow=2", "logging.progress=false",
        "logging.energy=false", "logging.plots=false", "logging.wandb.mode=disabled"])
    result = run(cfg)
    assert result.history[0]["clients"] == 2
    assert json.loads((result.run_dir / "data.json").read_text())["class_names"]["traffic_class"] == ["quic", "tls"]


def test_a_split_by_groups_keeps_each_group_whole_and_stays_stratified():
    from fedaux.data.partition import split_test_flows

    flows = FlowCollection.load()
    rng = lambda: np.random.default_rng([0, 1])  # noqa: E731
    plain = split_test_flows(flows.labels, 0.2, rng())
    # One group per flow, named in an order unrelated to the flows': the same split as no groups.
    shuffled_names = np.random.default_rng(3).permutation(flows.num_flows).astype(str)
    named = split_test_flows(flows.labels, 0.2, rng(), shuffled_names)
    assert all(np.array_equal(a, b) for a, b in zip(plain, named))
    # Groups of five flows of one class: whole groups on each side; one group per class is closest
    # to the 20% share (six flows).
    groups = np.array([f"capture-{i // 5}" for i in range(flows.num_flows)])[np.argsort(np.argsort(flows.labels, kind="stable"))]
    train, test = split_test_flows(flows.labels, 0.2, rng(), groups)
    assert not set(groups[train]) & set(groups[test])
    assert np.bincount(flows.labels[test]).tolist() == [5] * 5


def test_a_packet_too_long_for_the_store_is_one_line_naming_the_flow_and_the_way_out():
    """BIG TCP / segmentation offload captures hold IP packets above 65,535 bytes; a 65,535-byte IP
    packet is 65,549 as a frame, which fits as ``ip``."""
    with pytest.raises(FlowFormatError, match=r"bigtcp-ipv4.pcap: flow 'bigtcp-ipv4.pcap#tcp .*' has a packet of "
                                              r"80,066 bytes, more than a store keeps \(65,535\) \(segmentation offload"):
        read_captures(_needs(TCPDUMP / "bigtcp-ipv4.pcap"))
    path = _needs(TCPDUMP / "bgp_mp_reach_nlri-oobr.pcap")
    with pytest.raises(FlowFormatError, match=r"65,549 bytes.*with data.capture.length=ip it would count 65535 bytes"):
        read_captures(path)
    assert read_captures(path, length="ip")[0].lengths.max() == 65535
