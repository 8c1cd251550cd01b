"""Windows, derived targets, splits, partitions, label scarcity and DataModules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedaux.config import load_config
from fedaux.data.datamodule import ClientDataModule, HeldOutDataModule
from fedaux.data.features import cut_windows, packet_features
from fedaux.data.partition import IGNORE_INDEX, mask_labels, partition_flows, split_test_flows
from fedaux.data.samples import build_federated_data
from fedaux.data.targets import compute_targets


def _cfg(*overrides):
    return load_config(None, list(overrides))


def test_windows_shape_range_and_padding(embedded_flows):
    rng = np.random.default_rng(0)
    windows = cut_windows(embedded_flows, np.arange(10), packets=60, subflows_per_flow=5, min_packets=10, rng=rng)
    assert windows.x.shape == (50, 3, 60) and windows.x.dtype == np.float32
    assert windows.x[:, 0].min() >= 0 and windows.x[:, 0].max() <= 1
    assert np.abs(windows.x[:, 1]).max() <= 1
    # The first window of each flow starts at the flow's first packet.
    first = windows.x[0]
    assert first[0, 0] == 0.0
    assert first[1, 0] == pytest.approx((1 if embedded_flows.directions[0] == 1 else -1) * embedded_flows.lengths[0] / 1500)
    # Elapsed time: 0 at the flow's first packet, then log-scaled microseconds since it.
    times = embedded_flows.flow(0).times
    assert first[2, 0] == 0.0
    assert first[2, 59] == pytest.approx(np.log1p((times[59] - times[0]) * 1e6) / np.log1p(1e9), abs=1e-6)
    assert (np.diff(windows.x[:, 2], axis=1)[:, :50] >= 0).all()
    # A window longer than the flow is zero-padded.
    long = cut_windows(embedded_flows, np.array([0]), packets=5000, subflows_per_flow=3, min_packets=1, rng=rng)
    n = int(embedded_flows.packet_counts()[0])
    assert long.x.shape[0] == 1 if n <= 5000 else 3
    if n < 5000:
        assert not long.x[0, :, n:].any() and long.x[0, 1, :n].all()


def test_short_flows_are_dropped_and_reported(embedded_flows):
    counts = embedded_flows.packet_counts()
    threshold = int(np.sort(counts)[3])  # drops the three shortest flows
    windows = cut_windows(embedded_flows, np.arange(150), 60, 2, threshold, np.random.default_rng(0))
    assert len(windows.dropped_flows) == int((counts < threshold).sum()) >= 3
    assert set(windows.flow_index.tolist()).isdisjoint({embedded_flows.flow_names.index(n) for n in windows.dropped_flows})


def test_derived_targets_follow_the_configured_bins(embedded_flows):
    targets = compute_targets({n: dict(s) for n, s in _cfg().data.targets.items()}, embedded_flows)
    assert targets["bandwidth"].num_classes == 5 and targets["duration"].num_classes == 4
    flow = embedded_flows.flow(0)
    duration = flow.times[-1] - flow.times[0]
    assert targets["duration"].values[0] == np.digitize(duration, [10, 30, 60])
    assert targets["bandwidth"].values[0] == np.digitize(flow.lengths.sum() / duration, [1e4, 5e4, 1e5, 1e6])
    coarse = compute_targets({"duration": {"fn": "duration", "bins": [30]}}, embedded_flows)["duration"]
    assert coarse.num_classes == 2


def test_a_target_added_by_config_only(tmp_path, monkeypatch):
    (tmp_path / "my_targets.py").write_text(
        "def packets_per_second(flow):\n    return len(flow.times) / (flow.times[-1] - flow.times[0])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = _cfg("data.targets.pps={fn: 'my_targets:packets_per_second', bins: [100, 1000]}",
               "data.subflows_per_flow=2", "federated.base_stations=3", "federated.edge_servers=1")
    data = build_federated_data(cfg.data, 3, 1, seed=0)
    assert data.targets["pps"].num_classes == 3
    assert set(data.clients[0].targets) == {"traffic_class", "bandwidth", "duration", "pps"}
    assert data.test.targets["pps"].dtype == torch.int64


def test_unknown_target_function_lists_valid_names():
    with pytest.raises(ValueError, match=r"data.targets.x.fn='nope' is not a known target; valid names: .*bandwidth"):
        compute_targets({"x": {"fn": "nope"}}, None)


def test_no_flow_in_two_splits_and_partitions_repeat_from_the_seed():
    cfg = _cfg("data.subflows_per_flow=4")
    for scheme in ("iid", "dirichlet", "shards"):
        cfg.data.partition.scheme = scheme
        a = build_federated_data(cfg.data, base_stations=6, edge_servers=2, seed=3)
        b = build_federated_data(cfg.data, base_stations=6, edge_servers=2, seed=3)
        places = [set(a.test.flow_index.tolist())] + [set(c.flow_index.tolist()) for c in a.clients]
        for i in range(len(places)):
            for j in range(i + 1, len(places)):
                assert places[i].isdisjoint(places[j]), (scheme, i, j)
        assert set().union(*places) == set(range(150))
        for ca, cb in zip(a.clients, b.clients):
            assert torch.equal(ca.x, cb.x) and torch.equal(ca.targets["traffic_class"], cb.targets["traffic_class"])
        c = build_federated_data(cfg.data, base_stations=6, edge_servers=2, seed=4)
        assert any(not torch.equal(x.flow_index, y.flow_index) for x, y in zip(a.clients, c.clients))


def test_test_split_is_stratified():
    labels = np.repeat(np.arange(5), 30)
    train, test = split_test_flows(labels, 0.2, np.random.default_rng(0))
    assert np.bincount(labels[test]).tolist() == [6] * 5
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 150


def test_partition_schemes_and_edge_grouping():
    labels = np.repeat(np.arange(5), 24)
    flows = np.arange(120)
    rng = np.random.default_rng
    iid = partition_flows(flows, labels, 10, 2, "iid", rng(0))
    assert sorted(len(f) for f in iid.client_flows) == [12] * 10
    assert iid.edge_of_client.tolist() == [0] * 5 + [1] * 5
    skewed = partition_flows(flows, labels, 10, 2, "dirichlet", rng(0), alpha=0.1)
    classes_per_client = [len(np.unique(labels[f])) for f in skewed.client_flows]
    assert min(len(f) for f in skewed.client_flows) >= 1 and np.mean(classes_per_client) < 3
    shards = partition_flows(flows, labels, 10, 3, "shards", rng(0), shards_per_client=2)
    assert max(len(np.unique(labels[f])) for f in shards.client_flows) <= 2
    assert np.concatenate(shards.client_flows).tolist() != [] and sorted(np.concatenate(shards.client_flows)) == list(flows)
    with pytest.raises(ValueError, match="scheme='round' is not valid; choose one of"):
        partition_flows(flows, labels, 10, 2, "round", rng(0))


def test_label_scarcity_masks_only_the_main_task():
    cfg = _cfg("data.subflows_per_flow=8", "data.labeled_fraction=0.1")
    data = build_federated_data(cfg.data, base_stations=4, edge_servers=1, seed=0)
    for client in data.clients:
        main = client.targets["traffic_class"]
        assert (main != IGNORE_INDEX).sum() == max(1, round(0.1 * len(main)))
        assert (client.targets["bandwidth"] >= 0).all() and (client.targets["duration"] >= 0).all()
    assert (data.test.targets["traffic_class"] >= 0).all()
    labels = np.arange(10)
    assert (mask_labels(labels, 0.0, np.random.default_rng(0)) == IGNORE_INDEX).all()
    with pytest.raises(ValueError, match="labeled_fraction=1.5 must be in"):
        mask_labels(labels, 1.5, np.random.default_rng(0))


def test_datamodules_yield_dict_batches():
    cfg = _cfg("data.subflows_per_flow=4", "data.packets=32")
    data = build_federated_data(cfg.data, base_stations=2, edge_servers=1, seed=0)
    batch = next(iter(ClientDataModule(data.clients[0], batch_size=16, seed=1).train_dataloader()))
    assert batch["x"].shape == (16, 3, 32) and batch["x"].dtype == torch.float32
    assert {k: v.shape for k, v in batch.items() if k != "x"} == {k: (16,) for k in ("traffic_class", "bandwidth", "duration")}
    # A last training batch of a single sample (which BatchNorm cannot take) waits for the next epoch.
    client = data.clients[0]
    odd = type(client)(client.x[:33], {k: v[:33] for k, v in client.targets.items()}, client.flow_index[:33])
    assert [len(b["x"]) for b in ClientDataModule(odd, batch_size=32).train_dataloader()] == [32]
    test_batches = list(HeldOutDataModule(data.test, batch_size=64).val_dataloader())
    assert sum(len(b["x"]) for b in test_batches) == len(data.test)
    assert packet_features(data.flows).shape == (3, data.flows.num_packets)
