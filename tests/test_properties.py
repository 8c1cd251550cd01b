"""Property-based tests (hypothesis): the reader, the partitioner and the aggregator under any input,
and fuzzed flow files and configs through the CLIs, which must answer with a message, never a traceback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedaux.cli import data_main, train_main
from fedaux.data.partition import partition_flows
from fedaux.data.reader import FlowFormatError, parse_flow_file
from fedaux.federated.aggregation import two_tier_fedavg, weighted_average

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ---------------------------------------------------------------------------------------- reader
packet = st.tuples(st.floats(0, 1e-1, allow_nan=False), st.integers(0, 1500), st.integers(0, 1))


@FAST
@given(st.lists(packet, min_size=2, max_size=50), st.floats(1e9, 2e9))
def test_reader_round_trips_any_valid_flow(tmp_path_factory, packets, start):
    gaps = np.array([p[0] for p in packets])
    gaps[1] = max(gaps[1], 1e-3)  # a flow must last longer than zero
    times = np.cumsum(gaps) - gaps[0]
    path = tmp_path_factory.mktemp("flows") / "flow.txt"
    path.write_text("".join(f"{start + t:.6f}\t{float(t)!r}\t{p[1]}\t{p[2]}\n" for t, p in zip(times, packets)))
    flow = parse_flow_file(path)
    np.testing.assert_array_equal(flow.times, times)
    np.testing.assert_array_equal(flow.lengths, [p[1] for p in packets])
    np.testing.assert_array_equal(flow.directions, [p[2] for p in packets])


@FAST
@given(st.binary(max_size=300) | st.text(alphabet="0123456789.-e \tnaif\n", max_size=200))
def test_reader_answers_garbage_with_a_format_error_only(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("fuzz") / "flow.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    try:
        flow = parse_flow_file(path)
    except FlowFormatError as err:
        assert str(path) in str(err)
    else:  # garbage that happens to be a valid flow must really be one
        assert len(flow.times) >= 2 and flow.times[-1] > flow.times[0]
        assert set(np.unique(flow.directions)) <= {0, 1} and (flow.lengths >= 0).all()


@FAST
@given(st.binary(max_size=200))
def test_fuzzed_flow_files_never_traceback_from_the_cli(tmp_path_factory, capsys, content):
    root = tmp_path_factory.mktemp("raw")
    (root / "cls").mkdir()
    (root / "cls" / "f-1.txt").write_bytes(content)
    (root / "cls" / "f-2.txt").write_text("1 0 100 1\n2 1 100 0\n")
    for argv in (["info", "--data", str(root)], ["build", "--raw", str(root), "--out", str(root / "s.npz")]):
        code = data_main(argv)  # an exception escaping here is the traceback the CLI must not show
        assert code in (0, 2)
        if code == 2:
            assert "error:" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- partitions
@FAST
@given(st.integers(1, 6), st.integers(2, 20), st.integers(1, 12), st.sampled_from(["iid", "dirichlet", "shards"]),
       st.floats(0.05, 100), st.integers(0, 2**31))
def test_partitions_deal_every_flow_once_to_every_client(classes, per_class, clients, scheme, alpha, seed):
    labels = np.repeat(np.arange(classes), per_class)
    flows = np.arange(len(labels))
    edges = max(1, clients // 3)
    if clients > len(flows) or (scheme == "shards" and 2 * clients > len(flows)):
        with pytest.raises(ValueError):
            partition_flows(flows, labels, clients, edges, scheme, np.random.default_rng(seed), alpha=alpha)
        return
    part = partition_flows(flows, labels, clients, edges, scheme, np.random.default_rng(seed), alpha=alpha)
    dealt = np.concatenate(part.client_flows)
    assert sorted(dealt.tolist()) == flows.tolist()
    assert min(len(f) for f in part.client_flows) >= 1
    assert sorted(set(part.edge_of_client.tolist())) == list(range(edges))
    again = partition_flows(flows, labels, clients, edges, scheme, np.random.default_rng(seed), alpha=alpha)
    assert all(np.array_equal(a, b) for a, b in zip(part.client_flows, again.client_flows))


# ---------------------------------------------------------------------------------------- aggregation
def _states(draw_shapes, n, seed):
    gen = torch.Generator().manual_seed(seed)
    return [{f"t{i}": torch.randn(shape, generator=gen) for i, shape in enumerate(draw_shapes)} for _ in range(n)]


shapes = st.lists(st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple), min_size=1, max_size=4)


@FAST
@given(shapes, st.lists(st.integers(1, 1000), min_size=1, max_size=6), st.integers(0, 10_000))
def test_fedavg_weights_sum_to_one_and_order_does_not_matter(shape_list, samples, seed):
    states = _states(shape_list, len(samples), seed)
    const = [{k: torch.full_like(v, 3.5) for k, v in states[0].items()} for _ in samples]
    for value in weighted_average(const, samples).values():  # weights summing to one keep a constant
        torch.testing.assert_close(value, torch.full_like(value, 3.5))
    forward = weighted_average(states, samples)
    order = np.random.default_rng(seed).permutation(len(samples))
    backward = weighted_average([states[i] for i in order], [samples[i] for i in order])
    for key in forward:
        torch.testing.assert_close(forward[key], backward[key], rtol=1e-6, atol=1e-6)
    edges = [i % 2 for i in range(len(samples))]
    two = two_tier_fedavg(dict(enumerate(states)), dict(enumerate(samples)), edges).global_state
    for key in forward:
        torch.testing.assert_close(two[key], forward[key], rtol=1e-5, atol=1e-6)


@FAST
@given(shapes, st.integers(1, 1000), st.integers(0, 10_000))
def test_a_single_client_gets_its_own_state_back(shape_list, samples, seed):
    (state,) = _states(shape_list, 1, seed)
    state["counter"] = torch.tensor(seed)
    out = two_tier_fedavg({0: state}, {0: samples}, [0]).global_state
    for key, value in state.items():
        assert out[key].dtype == value.dtype
        torch.testing.assert_close(out[key], value, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------- configs
config_value = st.one_of(st.integers(-5, 500), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                         st.booleans(), st.none(), st.lists(st.integers(-3, 200), max_size=3))
config_key = st.sampled_from([
    "seed", "target_accuracy", "data.packets", "data.labeled_fraction", "data.partition.scheme",
    "data.partition.alpha", "data.features", "model.weighting.name", "model.optimizer.lr", "model.trunk.channels",
    "model.trunk.kernel_size", "federated.rounds", "federated.base_stations", "federated.edge_servers",
    "federated.fraction", "federated.batch_size", "model.heads.traffic_class", "bogus.key", "data.root",
    "data.folds", "data.fold", "data.labeled_flows_per_class", "data.exclude_classes",
])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(config_key, config_value, min_size=1, max_size=3))
def test_fuzzed_configs_never_traceback_from_the_cli(tmp_path_factory, capsys, overrides):
    from omegaconf import OmegaConf

    path = tmp_path_factory.mktemp("cfg") / "fuzz.yaml"
    node = OmegaConf.create({})
    for key, value in overrides.items():
        OmegaConf.update(node, key, value, force_add=True)
    path.write_text("extends: " + str(__import__("tests.conftest").conftest.REPO / "conf" / "quic.yaml") + "\n"
                    + OmegaConf.to_yaml(node))
    code = train_main(["--config", str(path), "--dry-run", "data.subflows_per_flow=1"])
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2:
        assert err.startswith("fedaux-train: error:") and "Traceback" not in err
