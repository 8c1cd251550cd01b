"""Step 15, the data side: k-fold cross-validation over flows (``data.folds``, ``data.fold``), labels on
a number of flows per class (``data.labeled_flows_per_class``) and classes left out of training as
unknown traffic (``data.exclude_classes``). The folds are checked on hand-made labels and groups and
on the real shipped stores; labels and exclusions on the real datamodule of the UC Davis store."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fedaux.config import load_config
from fedaux.data.flows import FlowCollection
from fedaux.data.partition import assign_folds, split_test_flows
from fedaux.data.samples import build_federated_data, local_client_samples, stream
from fedaux.data.sources import load_flows
from fedaux.errors import ConfigError
from fedaux.labels import IGNORE_INDEX
from fedaux.train import run
from tests.conftest import REPO

QUIC = REPO / "conf" / "quic.yaml"
SMALL = ["data.subflows_per_flow=2"]  # the split, partition and labels do not depend on the window count
PER_CLASS = ["data.labeled_fraction=null", "data.labeled_flows_per_class"]


def _data(*overrides: str, config=QUIC, base_stations: int = 10, seed: int = 0):
    cfg = load_config(config, [*SMALL, *overrides])
    return build_federated_data(cfg.data, base_stations, 2, seed)


def _every_fold(config, folds: int, *overrides: str):
    return [_data(f"data.folds={folds}", f"data.fold={f}", *overrides, config=config) for f in range(folds)]


# ---------------------------------------------------------------------------------------- folds
@pytest.mark.parametrize("folds", [2, 3, 5, 7])
def test_folds_partition_the_flows_and_test_each_once_stratified(folds):
    labels = np.repeat(np.arange(4), [30, 17, 9, 40])
    fold_of = assign_folds(labels, folds, np.random.default_rng(3))
    assert (fold_of >= 0).all() and set(fold_of.tolist()) == set(range(folds))
    for label in range(4):  # each class spread as evenly as flows allow
        per_fold = np.bincount(fold_of[labels == label], minlength=folds)
        assert per_fold.max() - per_fold.min() <= 1, (label, per_fold)
    sizes = np.bincount(fold_of, minlength=folds)
    assert sizes.max() - sizes.min() <= 1, sizes
    tested = Counter()
    for fold in range(folds):
        train, test = split_test_flows(labels, 0.2, np.random.default_rng(3), folds=folds, fold=fold)
        assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(labels)
        assert np.array_equal(test, np.flatnonzero(fold_of == fold))
        tested.update(test.tolist())
    assert sorted(tested) == list(range(len(labels))) and set(tested.values()) == {1}


def test_folds_keep_groups_whole_and_test_every_flow_once():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    # Groups of 1-9 flows inside each class, as captures are.
    groups = np.concatenate([np.repeat([f"c{c}-g{g}" for g in range(40)], rng.integers(1, 10, 40))[:40]
                             for c in range(3)])
    tested = Counter()
    for fold in range(4):
        train, test = split_test_flows(labels, 0.2, np.random.default_rng(1), groups, folds=4, fold=fold)
        assert set(groups[train]).isdisjoint(groups[test])  # no capture on both sides
        assert set(labels[test]) == {0, 1, 2}
        tested.update(test.tolist())
    assert sorted(tested) == list(range(len(labels))) and set(tested.values()) == {1}


def test_the_real_datamodule_tests_every_uc_davis_flow_once_across_folds():
    tested = Counter()
    for data in _every_fold(QUIC, 5):
        assert len(np.intersect1d(data.train_flows, data.test_flows)) == 0
        assert len(data.train_flows) + len(data.test_flows) == data.flows.num_flows == 150
        assert np.bincount(data.flows.labels[data.test_flows]).tolist() == [6] * 5  # stratified
        assert set(data.test.flow_index.tolist()) == set(data.test_flows.tolist())
        assert set(np.concatenate(data.partition.client_flows).tolist()) == set(data.train_flows.tolist())
        tested.update(data.test_flows.tolist())
    assert sorted(tested) == list(range(150)) and set(tested.values()) == {1}


def test_cicdoh20_captures_stay_whole_in_every_fold():
    # 1,200 flows in 71 captures (conf/cicdoh20.yaml: data.split_by=group): the split the datamodule makes.
    cfg = load_config(REPO / "conf" / "cicdoh20.yaml")
    flows, _ = load_flows(cfg.data.root, cfg.data)
    groups = flows.group_index()
    tested = Counter()
    for fold in range(5):
        train, test = split_test_flows(flows.labels, 0.2, stream(0, "split"), groups, flows.class_names, 5, fold)
        assert set(groups[train]).isdisjoint(groups[test])
        assert set(flows.labels[test].tolist()) == {0, 1, 2, 3}  # every class tested in every fold
        tested.update(test.tolist())
    assert sorted(tested) == list(range(1200)) and set(tested.values()) == {1}


def test_one_fold_is_todays_single_split_bit_for_bit():
    default = _data()
    for folds in ("data.folds=0", "data.folds=1"):
        same = _data(folds)
        assert np.array_equal(same.test_flows, default.test_flows)
        for a, b in zip([same.test, *same.clients], [default.test, *default.clients]):
            assert torch.equal(a.x, b.x) and torch.equal(a.flow_index, b.flow_index)
            assert all(torch.equal(a.targets[k], b.targets[k]) for k in a.targets)


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.folds=-1"], r"data.folds=-1 must be 0 or 1 \(one test split, data.test_fraction\) or >= 2"),
    (["data.folds=5", "data.fold=5"], r"data.fold=5 must be in \[0, 4\] \(data.folds=5\)"),
    (["data.folds=5", "data.fold=-1"], r"data.fold=-1 must be in \[0, 4\]"),
    (["data.fold=2"], r"data.fold=2 needs data.folds >= 2 .* the only valid value is 0"),
])
def test_bad_fold_keys_are_config_errors_naming_key_and_range(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(QUIC, overrides)


def test_a_one_capture_class_or_too_few_groups_is_an_error_under_folds():
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    groups = np.array(["a1", "a2", "a3", "a4", "b", "b", "b"])
    with pytest.raises(ConfigError, match=r"class\(es\) 'Tunnel' \(all 3 flows from one capture\) would be tested in "
                                          r"one fold.*data.split_by=flow"):
        assign_folds(labels, 2, np.random.default_rng(0), groups, class_names=["Benign", "Tunnel"])
    with pytest.raises(ConfigError, match=r"data.folds=6: only 4 fold\(s\) get a flow"):
        assign_folds(labels[:4], 6, np.random.default_rng(0), groups[:4])
    # A class of a single flow trains in every fold and is never tested (as under the single split).
    lone = np.array([0, 0, 0, 0, 1])
    fold_of = assign_folds(lone, 2, np.random.default_rng(0))
    assert fold_of[4] == -1 and sorted(fold_of[:4].tolist()) == [0, 0, 1, 1]
    assert all(4 in split_test_flows(lone, 0.2, np.random.default_rng(0), folds=2, fold=f)[0] for f in (0, 1))


# ---------------------------------------------------------------------------------------- labels per class
def _labelled_flows_per_class(data) -> Counter:
    """Distinct flows with at least one labelled training window, per class name, across base stations."""
    main = data.targets["traffic_class"]
    flows = set()
    for client in data.clients:
        labelled = client.targets["traffic_class"] != IGNORE_INDEX
        flows.update(client.flow_index[labelled].tolist())
        # A labelled flow has every window labelled; the others none.
        chosen = torch.isin(client.flow_index, client.flow_index[labelled])
        assert torch.equal(chosen, labelled)
    return Counter(main.class_names[main.values[f]] for f in flows)


@pytest.mark.parametrize("per_class", [1, 10])
def test_labeled_flows_per_class_labels_exactly_that_many_flows_per_class(per_class):
    data = _data(*PER_CLASS[:1], f"{PER_CLASS[1]}={per_class}", "data.subflows_per_flow=4")
    counts = _labelled_flows_per_class(data)
    assert counts == dict.fromkeys(data.targets["traffic_class"].class_names, per_class)
    assert (data.test.targets["traffic_class"] != IGNORE_INDEX).all()  # the test set keeps every label
    for client in data.clients:  # auxiliary targets on every window, labelled or not
        assert (client.targets["bandwidth"] >= 0).all() and (client.targets["duration"] >= 0).all()


def test_labelled_flows_are_drawn_by_the_seed_and_repeat():
    def chosen(seed: int, *extra: str) -> set[int]:
        data = _data(*PER_CLASS[:1], f"{PER_CLASS[1]}=5", *extra, seed=seed)
        return {f for c in data.clients for f in c.flow_index[c.targets["traffic_class"] != IGNORE_INDEX].tolist()}

    assert chosen(0) == chosen(0)
    assert chosen(0) != chosen(1)
    assert len(chosen(0, "data.folds=5", "data.fold=2")) == 25


def test_labeled_flows_per_class_errors_name_the_class_count_and_the_key_to_keep():
    with pytest.raises(ConfigError, match=r"data.labeled_fraction=0.1 and data.labeled_flows_per_class=10 are both "
                                          r"set; keep one: data.labeled_fraction=null .* or "
                                          r"data.labeled_flows_per_class=null"):
        load_config(QUIC, ["data.labeled_flows_per_class=10"])
    with pytest.raises(ConfigError, match="data.labeled_fraction is null and data.labeled_flows_per_class is not set"):
        load_config(QUIC, ["data.labeled_fraction=null"])
    with pytest.raises(ConfigError, match=r"data.labeled_flows_per_class=0 must be >= 1"):
        load_config(QUIC, [*PER_CLASS[:1], f"{PER_CLASS[1]}=0"])
    # 150 flows, 30 per class; 6 per class are test flows, so 24 train per class.
    with pytest.raises(ConfigError, match=r"data.labeled_flows_per_class=25, but class 'Google Doc' has 24 training "
                                          r"flow\(s\);.*class 'Youtube' has 24 training flow\(s\) long enough for a "
                                          r"window \(data.min_packets\); lower data.labeled_flows_per_class to 24"):
        _data(*PER_CLASS[:1], f"{PER_CLASS[1]}=25")


def test_a_deployed_base_station_refuses_labels_per_class():
    cfg = load_config(QUIC, [*SMALL, *PER_CLASS[:1], f"{PER_CLASS[1]}=3"])
    with pytest.raises(ConfigError, match="a deployed base station does not see"):
        local_client_samples(cfg.data, 0, 0, ["Google Doc", "Google Drive", "Google Music", "Google Search", "Youtube"])


# ---------------------------------------------------------------------------------------- excluded classes
def test_excluded_classes_stay_out_of_training_and_are_the_unknown_test_flows():
    data = _data("data.exclude_classes=[Google Music,Youtube]")
    full = _data()
    flows = data.flows
    excluded = {flows.class_names.index("Google Music"), flows.class_names.index("Youtube")}
    for client in data.clients:  # no window of theirs on any base station
        assert excluded.isdisjoint(flows.labels[client.flow_index.numpy()].tolist())
    main = data.targets["traffic_class"]
    assert main.class_names == ("Google Doc", "Google Drive", "Google Search") and data.target_classes["traffic_class"] == 3
    of_excluded = np.flatnonzero(np.isin(flows.labels, list(excluded)))
    assert np.array_equal(data.unknown_test_flows, of_excluded)  # all 60 of their flows, tested as unknown
    assert set(of_excluded) <= set(data.test_flows.tolist())
    unknown = data.unknown_test_windows
    assert torch.equal(unknown, torch.from_numpy(np.isin(data.test.flow_index.numpy(), of_excluded)))
    assert (data.test.targets["traffic_class"][unknown] == IGNORE_INDEX).all()
    assert (data.test.targets["traffic_class"][~unknown] >= 0).all()
    # The known classes are split as without the key: same test flows.
    known_test = np.setdiff1d(data.test_flows, of_excluded)
    assert np.array_equal(known_test, full.test_flows[~np.isin(flows.labels[full.test_flows], list(excluded))])
    described = data.describe()
    assert described["excluded_classes"] == ["Google Music", "Youtube"]
    assert described["unknown_test_flows"] == [flows.flow_names[i] for i in of_excluded]
    assert described["class_names"]["traffic_class"] == ["Google Doc", "Google Drive", "Google Search"]
    assert full.describe()["excluded_classes"] == [] and full.describe()["unknown_test_flows"] == []


def test_unknown_excluded_class_names_list_the_valid_ones():
    with pytest.raises(ConfigError, match=r"data.exclude_classes: \['Netflix'\] not class\(es\) of 'traffic_class'; "
                                          r"valid: \['Google Doc', 'Google Drive', 'Google Music'"):
        _data("data.exclude_classes=[Netflix]")
    with pytest.raises(ConfigError, match="names a class twice"):
        load_config(QUIC, ["data.exclude_classes=[Youtube,Youtube]"])


def test_a_deployed_base_station_leaves_excluded_flows_out():
    cfg = load_config(QUIC, [*SMALL, "data.exclude_classes=[Youtube]"])
    names = ["Google Doc", "Google Drive", "Google Music", "Google Search", "Youtube"]
    samples = local_client_samples(cfg.data, 0, 0, names)
    assert samples.flow_index.numel() > 0
    labels = FlowCollection.load().labels
    assert names.index("Youtube") not in set(labels[samples.flow_index.numpy()].tolist())


def test_a_run_with_every_new_key_trains_and_records_the_unknown_flows(small_cfg):
    cfg = OmegaConf.merge(small_cfg, {"data": {"folds": 5, "fold": 1, "labeled_fraction": None,
                                               "labeled_flows_per_class": 2, "exclude_classes": ["Google Drive"]},
                                      "federated": {"workers": 1}, "logging": {"wandb": {"mode": "disabled"}}})
    result = run(cfg)
    info = json.loads((result.run_dir / "data.json").read_text())
    assert info["excluded_classes"] == ["Google Drive"] and len(info["unknown_test_flows"]) == 30
    assert all(name.startswith("Google Drive/") for name in info["unknown_test_flows"])
    assert info["test_flows"] == 24 + 30  # fold 1: 6 flows of each of the 4 known classes, and every unknown flow
    assert result.orchestrator.runtime.model.tasks["traffic_class"].out_features == 4  # the known classes only
    assert torch.load(result.run_dir / "model.pt", weights_only=True)  # a finished run folder
    assert 0.0 <= result.summary["final_accuracy"] <= 1.0
