"""Client-level differential privacy: clipping, noise, Opacus' accountant, budget and resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from opacus.accountants import RDPAccountant

from fedaux.config import ConfigError, load_config
from fedaux.federated.hooks import RoundCallback
from fedaux.federated.privacy import clip_update, update_norm
from fedaux.train import build_orchestrator
from tests.conftest import REPO


def _cfg(tmp_path, *overrides, rounds=2):
    return load_config(REPO / "conf" / "quic.yaml", [
        f"output_dir={tmp_path}", "data.subflows_per_flow=2", f"federated.rounds={rounds}",
        "federated.base_stations=3", "federated.edge_servers=2", "logging.progress=false", "logging.energy=false",
        "logging.plots=false", "logging.wandb.mode=disabled", *overrides])


class _Updates(RoundCallback):
    """The states as the edge servers aggregate them, with the payload they started from."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_client_done(self, orchestrator, rnd, update):
        self.norms.append(update_norm(update.state, orchestrator.payload))


def _run(cfg, callbacks=()):
    orchestrator = build_orchestrator(cfg, callbacks=list(callbacks))
    orchestrator.run()
    return orchestrator


@pytest.mark.parametrize("mode", ["central", "local"])
def test_no_noise_and_an_unreached_bound_equal_plain_fedavg_exactly(mode, tmp_path):
    plain = _run(_cfg(tmp_path / "plain"))
    private = _run(_cfg(tmp_path / mode, f"privacy.mode={mode}", "privacy.noise_multiplier=0", "privacy.clip_norm=1e9"))
    for key, value in plain.global_state.items():
        assert torch.equal(value, private.global_state[key]), key


def test_clipped_updates_have_norm_at_most_the_bound(tmp_path):
    seen = _Updates()
    _run(_cfg(tmp_path, "privacy.mode=central", "privacy.clip_norm=0.5", "privacy.noise_multiplier=0.5"), [seen])
    assert len(seen.norms) == 6
    assert max(seen.norms) <= 0.5 * (1 + 1e-6)
    clipped = clip_update({"w": torch.tensor([3.0, 4.0])}, {"w": torch.zeros(2)}, 2.5)
    assert update_norm(clipped, {"w": torch.zeros(2)}) == pytest.approx(2.5)


@pytest.mark.slow  # three runs
def test_epsilon_grows_matches_opacus_and_survives_resume(tmp_path):
    overrides = ["privacy.mode=central", "privacy.noise_multiplier=1.2", "privacy.clip_norm=1.0",
                 "federated.fraction=0.67"]
    whole = _run(_cfg(tmp_path / "whole", *overrides, rounds=3))
    eps = [r["privacy/epsilon"] for r in whole.history]
    assert eps == sorted(eps) and eps[0] < eps[-1]
    reference = RDPAccountant()
    for round_eps in eps:
        reference.step(noise_multiplier=1.2, sample_rate=2 / 3)  # 2 of 3 base stations a round
        assert round_eps == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    assert whole.summary["privacy_epsilon"] == eps[-1]
    first = _run(_cfg(tmp_path / "first", *overrides, rounds=2))
    resumed = build_orchestrator(_cfg(tmp_path / "resumed", *overrides, rounds=3))
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    resumed.run()
    assert resumed.history[-1]["privacy/epsilon"] == eps[-1]
    for key, value in whole.global_state.items():  # the noise is seeded by round and edge: same draws
        assert torch.equal(value, resumed.global_state[key]), key


def test_max_epsilon_stops_before_the_round_that_would_cross_it(tmp_path):
    accountant = RDPAccountant()
    for _ in range(2):
        accountant.step(noise_multiplier=1.0, sample_rate=1.0)
    two = accountant.get_epsilon(1e-5)
    accountant.step(noise_multiplier=1.0, sample_rate=1.0)
    three = accountant.get_epsilon(1e-5)
    budget = (two + three) / 2
    run = _run(_cfg(tmp_path, "privacy.mode=central", "privacy.noise_multiplier=1.0", f"privacy.max_epsilon={budget}",
                    rounds=5))
    assert run.completed_rounds == 2 and len(run.history) == 2
    assert run.history[-1]["privacy/epsilon"] == pytest.approx(two) and two <= budget
    assert "round 3 would take epsilon" in run.summary["stopped_early"]


def test_central_privacy_refuses_a_robust_aggregation_rule():
    with pytest.raises(ConfigError, match="privacy.mode=central needs federated.aggregation=fedavg"):
        load_config(REPO / "conf" / "quic.yaml", ["privacy.mode=central", "federated.aggregation=median"])


@pytest.mark.slow  # Opacus per-sample gradients
def test_dpsgd_trains_with_group_norm_and_reports_each_base_stations_epsilon(tmp_path):
    cfg = _cfg(tmp_path, "privacy.mode=dpsgd", "privacy.noise_multiplier=1.0", "privacy.clip_norm=1.0",
               "federated.base_stations=2", rounds=2)
    assert cfg.model.trunk.norm == "group"  # BatchNorm mixes samples: replaced for per-sample gradients
    run = _run(cfg)
    eps = [r["privacy/epsilon"] for r in run.history]
    assert 0 < eps[0] < eps[1]  # each base station's epsilon accumulates over its rounds
    for client, samples in enumerate(run.data.clients):
        history = run.client_states[client]["dpsgd"]["accountant"]
        batches = math.ceil(len(samples) / 32)
        assert [tuple(h) for h in history.tolist()] == [(1.0, 1 / batches, batches)] * 2 or \
            [tuple(h) for h in history.tolist()] == [(1.0, 1 / batches, 2 * batches)]
    assert run.history[-1]["privacy/epsilon"] == pytest.approx(
        max(_epsilon(run.client_states[c]["dpsgd"]["accountant"]) for c in range(2)))
    # Opacus' hooks are gone after each fit: the next base station's fit starts from a plain module.
    assert not any(m._forward_hooks or m._backward_hooks for m in run.model.modules())


def _epsilon(history):
    accountant = RDPAccountant()
    accountant.history = [(float(z), float(q), int(n)) for z, q, n in history.tolist()]
    return accountant.get_epsilon(1e-5)


def test_dpsgd_refuses_a_weighting_with_parameters():
    with pytest.raises(ConfigError, match="privacy.mode=dpsgd with model.weighting.name='uncertainty'"):
        load_config(REPO / "conf" / "quic.yaml", ["privacy.mode=dpsgd", "model.weighting.name=uncertainty"])


@pytest.mark.slow  # three runs with run folders
def test_epsilon_and_compression_residuals_survive_a_checkpointed_resume(tmp_path):
    """Through the run folder's checkpoint, as `fedaux-train --resume` does."""
    from fedaux.train import run

    overrides = ["privacy.mode=central", "privacy.noise_multiplier=1.0", "federated.compression.uplink=topk",
                 "federated.compression.topk_fraction=0.1"]
    whole = run(_cfg(tmp_path / "whole", *overrides, rounds=3))
    first = run(_cfg(tmp_path / "cut", *overrides, rounds=2))
    resumed = run(_cfg(tmp_path / "cut", *overrides, rounds=3), resume=first.run_dir)
    assert [r["privacy/epsilon"] for r in resumed.history] == [r["privacy/epsilon"] for r in whole.history]
    assert [r["comm/bytes_total"] for r in resumed.history] == [r["comm/bytes_total"] for r in whole.history]
    for key, value in whole.orchestrator.global_state.items():
        assert torch.equal(value, resumed.orchestrator.global_state[key]), key


class _Uploads(RoundCallback):
    """Every base station's upload as its edge server receives it, and each round's byte counts."""

    def __init__(self) -> None:
        self.keys: list[set[str]] = []
        self.bytes: list[tuple[dict, dict]] = []

    def on_client_done(self, orchestrator, rnd, update):
        self.keys.append(set(update.state))

    def on_aggregated(self, orchestrator, rnd, aggregate):
        self.bytes.append((dict(aggregate.bytes_down), dict(aggregate.bytes_up)))


def test_local_batchnorm_statistics_stay_on_each_base_station_and_are_not_sent(tmp_path):
    """federated.batchnorm=local (FedBN): the statistics never go down or up, so clipping and noise
    never see them; each base station trains on with its own, and the global model keeps its initial ones."""
    from fedaux.federated.aggregation import state_nbytes
    from fedaux.federated.orchestrator import TIER_EDGE, TIER_TOP
    from fedaux.federated.strategies import batchnorm_statistics

    sent, local = _Uploads(), _Uploads()
    _run(_cfg(tmp_path / "plain", "privacy.mode=central", "privacy.noise_multiplier=0.01"), [sent])
    fedbn = _run(_cfg(tmp_path / "fedbn", "privacy.mode=central", "privacy.noise_multiplier=0.01",
                      "federated.batchnorm=local"), [local])
    statistics = set(batchnorm_statistics(fedbn.model))
    assert statistics and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in statistics)
    assert all(statistics <= keys for keys in sent.keys)  # federated: they travel with the model
    assert len(local.keys) == 6 and not any(statistics & keys for keys in local.keys)
    assert statistics.isdisjoint(fedbn.payload)
    # Exactly their bytes are saved on every link: per base station up, per link down.
    stats_bytes = state_nbytes({k: fedbn.global_state[k] for k in statistics})
    for (down_p, up_p), (down_l, up_l) in zip(sent.bytes, local.bytes):
        assert up_p[TIER_EDGE] - up_l[TIER_EDGE] == 3 * stats_bytes
        assert down_p[TIER_EDGE] - down_l[TIER_EDGE] == 3 * stats_bytes
        assert up_p[TIER_TOP] - up_l[TIER_TOP] == 2 * stats_bytes  # and no edge server sends them up
    # Each base station holds its own statistics, from its own windows; the global model its initial ones.
    own = {c: s["batchnorm"] for c, s in fedbn.client_states.items()}
    assert set(own) == {0, 1, 2} and all(set(s) == statistics for s in own.values())
    key = next(k for k in sorted(statistics) if k.endswith("running_mean"))
    assert not torch.equal(own[0][key], own[1][key])
    for k in statistics:
        assert torch.equal(fedbn.global_state[k], fedbn.runtime.initial_state[k]), k
    # The method is scored by the base stations' own models.
    record = fedbn.history[-1]
    assert fedbn.strategy.headline_key("traffic_class") == "personal/acc/traffic_class"
    assert 0 <= record["personal/acc/traffic_class"] <= 1


def test_local_batchnorm_needs_batchnorm(tmp_path):
    with pytest.raises(ConfigError, match=r"federated.batchnorm=local .*\(model.trunk.norm is not batch\)"):
        build_orchestrator(_cfg(tmp_path, "federated.batchnorm=local", "model.trunk.norm=group"))
