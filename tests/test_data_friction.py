"""Data as it comes (step 14): one-packet and equal-timestamp flows, short flows counted, CertTA's own
folder layout, quantile bins from ``fedaux-data info``, group splits that would test nothing, and
the messages around them. Every test goes through the real code path: the CLIs' main functions,
captures written with dpkt, the shared CertTA JSON where it is beside the checkout."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import dpkt
import numpy as np
import pytest
from omegaconf import OmegaConf

from fedaux.cli import data_main, train_main
from fedaux.cli_models import eval_main
from fedaux.config import load_config
from fedaux.data.features import cut_windows, packet_features
from fedaux.data.flows import FlowCollection, FlowView
from fedaux.data.partition import split_test_flows
from fedaux.data.reader import FlowFormatError
from fedaux.data.sources import load_flows
from fedaux.data.targets import TARGET_FUNCTIONS, compute_targets, raw_target_values
from fedaux.errors import ConfigError, DataError
from tests.conftest import REPO, good_rows, write_flow

CERTTA = REPO.parent / "shared" / "data" / "certta-cicdoh20"
BUILT_IN_TARGETS = ("traffic_class", "bandwidth", "duration", "upload_fraction", "random_uniform")


# ------------------------------------------------------------------------------------ captures
def _frame(src: bytes, dst: bytes, sport: int, dport: int, payload: int) -> bytes:
    segment = dpkt.udp.UDP(sport=sport, dport=dport, data=bytes(payload))
    ip = dpkt.ip.IP(src=src, dst=dst, p=dpkt.ip.IP_PROTO_UDP, ttl=64, data=segment)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02\x00\x00\x00\x00\x01", dst=b"\x02\x00\x00\x00\x00\x02",
                                        type=dpkt.ethernet.ETH_TYPE_IP, data=ip))


def _write_class_capture(path: Path, net: int) -> dict[str, int]:
    """One pcap of seven UDP flows: three of one packet, two of three packets sharing one
    timestamp, two of 12 packets over 1.1 s. Returns the flows' packet counts by kind."""
    client, server = bytes([10, 0, net, 1]), bytes([10, 0, net, 2])
    packets: list[tuple[float, bytes]] = []
    start = 1_700_000_000.0 + 100 * net
    for k in range(3):  # one packet: a query nobody answered
        packets.append((start + k, _frame(client, server, 5000 + k, 53, 40 + 10 * net)))
    for k in range(2):  # three packets, one timestamp: a burst the clock cannot split
        t = start + 10 + k
        for j in range(3):
            up = j % 2 == 0
            packets.append((t, _frame(client if up else server, server if up else client,
                                      6000 + k if up else 443, 443 if up else 6000 + k, 100 + 200 * j)))
    for k in range(2):  # 12 packets over 1.1 s, both ways
        for j in range(12):
            up = j % 3 != 2
            packets.append((start + 20 + k * 5 + 0.1 * j,
                            _frame(client if up else server, server if up else client,
                                   7000 + k if up else 443, 443 if up else 7000 + k, 200 + 50 * j + 300 * net)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        writer = dpkt.pcap.Writer(handle, linktype=dpkt.pcap.DLT_EN10MB)
        for ts, frame in sorted(packets, key=lambda p: p[0]):
            writer.writepkt(frame, ts=ts)
    return {"one_packet": 3, "same_time": 2, "long": 2}


@pytest.fixture
def short_flow_captures(tmp_path: Path) -> Path:
    """A capture folder of two classes, one pcap each, most flows of one packet or one timestamp."""
    root = tmp_path / "captures"
    _write_class_capture(root / "dns" / "dns.pcap", 1)
    _write_class_capture(root / "web" / "web.pcap", 2)
    return root


def _tiny_run_args(tmp_path: Path, root: Path) -> list[str]:
    return ["--config", str(REPO / "conf" / "quic.yaml"), f"data.root={root}", f"output_dir={tmp_path / 'out'}",
            "federated.rounds=1", "federated.base_stations=2", "federated.edge_servers=1", "federated.workers=1",
            "data.subflows_per_flow=2", "logging.progress=false", "logging.energy=false", "logging.plots=false",
            "logging.wandb.mode=disabled"]


def test_captures_of_one_packet_flows_go_through_info_build_train_and_eval(short_flow_captures, tmp_path, capsys,
                                                                           caplog):
    root = short_flow_captures
    flows, _ = load_flows(root)
    counts = flows.packet_counts()
    assert flows.num_flows == 14 and sorted(set(counts.tolist())) == [1, 3, 12]
    # The default data.min_packets (10) keeps only the 12-packet flows: four of 14, two per class.
    assert int((counts >= 10).sum()) == 4

    # fedaux-data info: no ZeroDivisionError; the short flows counted, per class too.
    assert data_main(["info", "--data", str(root)]) == 0
    out = capsys.readouterr().out
    assert "10 of 14 flows have fewer than data.min_packets=10 packets (dns: 5, web: 5)" in out
    assert "training leaves them out" in out
    assert "bandwidth: {fn: bandwidth, bins: [" in out  # the quantile bins snippet

    # fedaux-data build, and the targets of every flow of the store are finite.
    store = tmp_path / "short.npz"
    assert data_main(["build", "--raw", str(root), "--out", str(store)]) == 0
    assert "10 of 14 flows have fewer than data.min_packets=10" in capsys.readouterr().out
    stored = FlowCollection.load(store)
    specs = {"bandwidth": {"fn": "bandwidth"}, "duration": {"fn": "duration"}, "up": {"fn": "upload_fraction"}}
    raw = {name: raw_target_values(name, spec["fn"], stored) for name, spec in specs.items()}
    assert all(np.isfinite(v).all() for v in raw.values())
    zero = stored.packet_counts() < 12  # the one-packet and one-timestamp flows
    assert (raw["duration"][zero] == 0.0).all() and (raw["duration"][~zero] > 1.0).all()
    one = np.flatnonzero(stored.packet_counts() == 1)[0]
    assert raw["bandwidth"][one] == float(stored.lengths[stored.offsets[one]]) / 1e-6

    # fedaux-train --dry-run with the default group split: each class is one capture, so no test flow.
    base = _tiny_run_args(tmp_path, root)
    assert train_main([*base, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "'dns' (all 7 flows from one capture), 'web' (all 7 flows from one capture)" in err
    assert "data.split_by=flow" in err and "config ok" not in err

    # Split flow by flow: the dry run passes and reports the flows the default min_packets leaves out.
    with caplog.at_level(logging.WARNING, logger="fedaux.data.samples"):
        assert train_main([*base, "data.split_by=flow", "--dry-run"]) == 0
    assert "config ok" in capsys.readouterr().out
    assert "10 of 14 flows have fewer than data.min_packets=10 packets (dns: 5, web: 5)" in caplog.text
    assert "left out of training and testing" in caplog.text

    # Keep every flow (data.min_packets=1) and train one round on them, one-packet flows included.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedaux.data.samples"):
        assert train_main([*base, "data.split_by=flow", "data.min_packets=1"]) == 0
    assert "fewer than data.min_packets" not in caplog.text
    capsys.readouterr()
    run_dir = next((tmp_path / "out").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["dropped_flows"] == 0 and np.isfinite(summary["final_accuracy"])

    # fedaux-eval --data on the same captures: every flow scored, the report in RUN_DIR/eval/.
    assert eval_main([str(run_dir), "--data", str(root)]) == 0
    assert "14 flows)" in capsys.readouterr().out
    assert (run_dir / "eval" / "eval.json").is_file()


def test_every_built_in_target_and_feature_is_defined_for_zero_duration_flows():
    one = FlowView(np.zeros(1), np.array([1200]), np.ones(1, np.uint8), 0, "a", "a/one")
    same = FlowView(np.full(3, 2.5), np.array([100, 1500, 60]), np.array([1, 0, 1], np.uint8), 0, "a", "a/same")
    for flow in (one, same):
        values = {name: TARGET_FUNCTIONS.get(name)(flow) for name in BUILT_IN_TARGETS}
        assert all(np.isfinite(v) for v in values.values()), values
        assert values["duration"] == 0.0
        assert values["bandwidth"] == float(flow.lengths.sum()) / 1e-6  # as fast as the clock can tell
    # 1 us apart is the store's resolution: the floor changes nothing from there on.
    tick = FlowView(np.array([0.0, 1e-6]), np.array([100, 100]), np.ones(2, np.uint8), 0, "a", "a/tick")
    assert TARGET_FUNCTIONS.get("bandwidth")(tick) == 200 / 1e-6
    # A last packet recorded before the first (reordering) lasts 0 s, not less.
    back = FlowView(np.array([0.0, 0.0004, -0.0002]), np.full(3, 100), np.ones(3, np.uint8), 0, "a", "a/back")
    assert TARGET_FUNCTIONS.get("duration")(back) == 0.0 and TARGET_FUNCTIONS.get("bandwidth")(back) == 300 / 1e-6

    from fedaux.data.reader import ParsedFlow

    parsed = [ParsedFlow(0.0, np.zeros(1), np.array([1200]), np.ones(1, np.uint8)),
              ParsedFlow(0.0, np.zeros(3), np.array([100, 1500, 60]), np.array([1, 0, 1], np.uint8))]
    flows = FlowCollection.from_parsed(parsed, [0, 0], ["a/one", "a/same"], ["a"])
    features = packet_features(flows)
    assert np.isfinite(features).all()
    windows = cut_windows(flows, np.arange(2), packets=60, subflows_per_flow=4, min_packets=1,
                          rng=np.random.default_rng(0), features=features)
    assert windows.flow_index.tolist() == [0, 1] and np.isfinite(windows.x).all() and not windows.dropped_flows
    targets = compute_targets({n: {"fn": n} for n in BUILT_IN_TARGETS}, flows)
    assert all(np.isfinite(t.values.astype(np.float64)).all() for t in targets.values())


@pytest.mark.parametrize("store", ["embedded:ucdavis_quic_script", "embedded:cicdoh20"])
def test_shipped_flows_keep_bandwidth_bytes_over_duration_bit_for_bit(store):
    """Every shipped flow lasts over 1 us, so the floor never applies: each bandwidth is still exactly
    bytes / (last time - first time), the value before zero-duration flows were defined."""
    flows, _ = load_flows(store)
    bandwidth, duration = TARGET_FUNCTIONS.get("bandwidth"), TARGET_FUNCTIONS.get("duration")
    for i in range(flows.num_flows):
        flow = flows.flow(i)
        span = float(flow.times[-1] - flow.times[0])
        assert span > 1e-6
        assert duration(flow) == span
        assert bandwidth(flow) == float(flow.lengths.sum()) / span


# ------------------------------------------------------------------------------------ short flows
def test_text_flows_shorter_than_min_packets_are_counted_in_info_and_the_log(raw_folder, small_cfg, capsys, caplog):
    from fedaux.data.samples import build_federated_data

    write_flow(raw_folder / "alpha" / "alpha-9.txt", good_rows(1))  # one packet: a valid flow
    write_flow(raw_folder / "beta" / "beta-9.txt", good_rows(4))
    assert data_main(["info", "--data", str(raw_folder)]) == 0
    out = capsys.readouterr().out
    assert "2 of 8 flows have fewer than data.min_packets=10 packets (alpha: 1, beta: 1)" in out
    assert "< 10 packets" in out.splitlines()[out.splitlines().index("") + 1]  # the class table's column

    cfg = OmegaConf.merge(small_cfg, {"data": {"root": str(raw_folder), "test_fraction": 0.25}})
    with caplog.at_level(logging.WARNING, logger="fedaux.data.samples"):
        data = build_federated_data(cfg.data, 2, 1, seed=0)
    assert "2 of 8 flows have fewer than data.min_packets=10 packets (alpha: 1, beta: 1)" in caplog.text
    assert sorted(n.split("/")[1] for n in data.dropped_flows) == ["alpha-9.txt", "beta-9.txt"]

    # When no flow is long enough there is nothing to train on: said, with the setting that helps.
    cfg = OmegaConf.merge(cfg, {"data": {"min_packets": 100}})
    with pytest.raises(DataError, match=r"8 of 8 flows .* set data.min_packets=23 or lower"):
        build_federated_data(cfg.data, 2, 1, seed=0)


# ------------------------------------------------------------------------------------ CertTA
def _certta_flow(label: int, n: int, source: str) -> dict:
    times = [round(0.01 * i, 6) for i in range(n)]
    return {"timestamp": times, "direction_length": [(-1) ** i * (100 + i) for i in range(n)], "label": label,
            "source_file": source}


def _certta_layout(root: Path, with_labels: bool = True) -> Path:
    """CertTA's release layout: <dataset>/labels.json beside <dataset>/json/{test,valid}.json."""
    for split in ("test", "valid"):
        flows = [_certta_flow(label, 12, f"./D/pcap/C{label}/cap{k % 2}/conn{k}/x.pcap")
                 for label in (0, 1) for k in range(4)]
        (root / "json").mkdir(parents=True, exist_ok=True)
        (root / "json" / f"{split}.json").write_text(json.dumps(flows))
    (root / "json" / "statistics.json").write_text(json.dumps({"label_num": 2}))
    if with_labels:
        (root / "labels.json").write_text(json.dumps({"Benign": 0, "Tunnel": 1}))
    return root


def test_certta_labels_are_found_one_folder_up_and_the_dataset_folder_is_a_source(tmp_path):
    root = _certta_layout(tmp_path / "D")
    from_parent, _ = load_flows(root)
    from_json, _ = load_flows(root / "json")
    from_file, _ = load_flows(root / "json" / "test.json")
    assert from_parent.class_names == from_json.class_names == from_file.class_names == ("Benign", "Tunnel")
    assert from_parent.num_flows == from_json.num_flows == 16 and from_file.num_flows == 8
    assert from_parent.checksum() == from_json.checksum()  # one data set, whichever folder names it
    # labels.json beside the flow files wins over one a folder up.
    (root / "json" / "labels.json").write_text(json.dumps({"Near": 0, "Far": 1}))
    assert load_flows(root / "json")[0].class_names == ("Near", "Far")


def test_a_missing_certta_labels_file_is_said_with_where_it_was_looked_for(tmp_path, caplog):
    root = _certta_layout(tmp_path / "D", with_labels=False)
    with caplog.at_level(logging.WARNING, logger="fedaux.data.certta"):
        flows, _ = load_flows(root)
    assert flows.class_names == ("class-0", "class-1")
    assert f"looked for {root / 'json' / 'labels.json'}, {root / 'labels.json'}" in caplog.text
    (root / "labels.json").write_text(json.dumps({"Benign": 0, "Tunnel": 2}))
    with pytest.raises(FlowFormatError, match=r"labels\.json: no name for label\(s\) \[1\]"):
        load_flows(root)
    (root / "labels.json").write_text(json.dumps({"Benign": 0, "Tunnel": 1, "Other": 3}))
    with pytest.raises(FlowFormatError, match=r"labels\.json: label indices must be 0, 1, ... .*no name for \[2\]"):
        load_flows(root)


def test_the_shared_certta_release_reads_from_its_dataset_folder(tmp_path):
    if not CERTTA.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    root = tmp_path / "CICDOH20"
    (root / "json").mkdir(parents=True)
    for name in ("test.json", "valid.json", "statistics.json"):
        shutil.copy(CERTTA / name, root / "json" / name)
    shutil.copy(CERTTA / "labels.json", root / "labels.json")
    flows, _ = load_flows(root)
    shipped = FlowCollection.load(REPO / "fedaux" / "data" / "embedded" / "cicdoh20.npz")
    assert flows.class_names == ("Benign", "DNS2TCP", "DNSCat2", "Iodine")
    assert flows.checksum() == shipped.checksum() == load_flows(root / "json")[0].checksum()


# ------------------------------------------------------------------------------------ quantile bins
def test_info_prints_quantile_bins_that_paste_into_the_config(tmp_path, capsys):
    overrides = ["data.targets.up={fn: upload_fraction}", "data.targets.duration.bins=[10, 60]",
                 'data.targets.span={fn: "fedaux.data.targets:duration", bins: [1, 2, 3, 4, 5, 6]}']
    assert data_main(["info", *overrides]) == 0
    out = capsys.readouterr().out
    snippet = out[out.index("quantile bins over the 150 flows"):]
    yaml_text = "\n".join(snippet.splitlines()[1:])
    targets = OmegaConf.create(yaml_text).data.targets
    assert len(targets.bandwidth.bins) == 4 and len(targets.duration.bins) == 2  # quintiles, terciles
    assert targets.span.fn == "fedaux.data.targets:duration" and len(targets.span.bins) == 6  # septiles
    assert "quintiles: 5 classes of 30, 30, 30, 30, 30 flows" in snippet and "terciles" in snippet
    assert "up" not in targets  # a regression target's bins come commented out
    assert "# up: {fn: upload_fraction, bins: [" in snippet and "quartiles" in snippet
    # Pasted into a config file, the bins split the 150 flows into classes of nearly equal size.
    pasted = tmp_path / "pasted.yaml"
    pasted.write_text(f"extends: {REPO / 'conf' / 'quic.yaml'}\n{yaml_text}\n")
    cfg = load_config(pasted)
    assert set(cfg.data.targets) == {"traffic_class", "bandwidth", "duration", "span"}
    flows = FlowCollection.load()
    for name, target in compute_targets({n: dict(s) for n, s in cfg.data.targets.items()}, flows).items():
        if name != "traffic_class":
            sizes = np.bincount(target.values, minlength=target.num_classes)
            assert sizes.max() - sizes.min() <= 2, (name, sizes)


# ------------------------------------------------------------------------------------ group split
def test_a_group_split_that_would_leave_a_class_untested_is_an_error_naming_the_class(caplog):
    labels = np.array([0, 0, 0, 1, 1, 1, 2])
    groups = np.array(["a1", "a2", "a3", "b", "b", "b", "c"])
    with caplog.at_level(logging.WARNING, logger="fedaux.data.partition"):
        with pytest.raises(ConfigError, match=r"class\(es\) 'Tunnel' \(all 3 flows from one capture\) without test "
                                              r"flows.*Set data.split_by=flow"):
            split_test_flows(labels, 0.2, np.random.default_rng(0), groups, class_names=["Benign", "Tunnel", "Lone"])
        train, test = split_test_flows(labels, 0.2, np.random.default_rng(0), None, class_names=["Benign", "Tunnel",
                                                                                               "Lone"])
    assert "class 'Lone' has a single flow" in caplog.text  # named, not numbered
    assert set(labels[test]) == {0, 1} and 6 in train


# ------------------------------------------------------------------------------------ messages
def test_a_symlink_loop_as_data_root_is_named_as_one(tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert data_main(["info", "--data", str(loop)]) == 2
    err = capsys.readouterr().err
    assert f"{loop}: a symlink loop" in err and "nothing at this path" not in err
    assert data_main(["info", "--data", str(loop / "inside")]) == 2
    assert f"{loop / 'inside'}: {loop}, on the way to it, is a symlink loop" in capsys.readouterr().err
    assert data_main(["info", "--data", "a\x00b"]) == 2  # a NUL byte: no traceback either
    assert "'a\\x00b': not a usable path" in capsys.readouterr().err
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    assert data_main(["info", "--data", str(dangling)]) == 2
    assert f"{dangling}: a symlink to {tmp_path / 'gone'}, where there is nothing" in capsys.readouterr().err
