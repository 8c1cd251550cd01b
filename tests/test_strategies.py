"""Federated strategies by name: each trains, and each keeps the property its paper states."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from fedaux.callbacks import CommunicationTracker

from fedaux.config import load_config
from fedaux.federated.aggregation import state_nbytes
from fedaux.federated.orchestrator import TIER_EDGE
from fedaux.federated.strategies import STRATEGIES
from fedaux.federated.strategies.fedprox import ProximalTerm
from fedaux.federated.strategies.scaffold import CONTROL
from fedaux.train import build_orchestrator
from tests.conftest import REPO

ALL = ["fedavg", "fedprox", "scaffold", "fedavgm", "fedadam", "fedper", "fedrep"]


def _cfg(tmp_path, *overrides, rounds=2):
    return load_config(REPO / "conf" / "quic.yaml", [
        f"output_dir={tmp_path}", "data.subflows_per_flow=2", f"federated.rounds={rounds}",
        "federated.base_stations=3", "federated.edge_servers=2", "logging.progress=false", "logging.energy=false",
        "logging.plots=false", "logging.wandb.mode=disabled", *overrides,
    ])


def _run(cfg):
    orchestrator = build_orchestrator(cfg, callbacks=[CommunicationTracker()])
    orchestrator.run()
    return orchestrator


def test_every_strategy_is_registered_and_offered_by_config():
    from fedaux.config import choices

    assert STRATEGIES.names() == ALL
    assert choices()["federated.strategy"] == ALL


@pytest.mark.parametrize("strategy", ALL)
def test_each_strategy_trains_two_rounds_by_name(strategy, tmp_path):
    orchestrator = _run(_cfg(tmp_path, f"federated.strategy={strategy}"))
    assert [r["round"] for r in orchestrator.history] == [1, 2]
    key = orchestrator.strategy.headline_key("traffic_class")
    assert all(0 <= r[key] <= 1 for r in orchestrator.history)
    assert orchestrator.summary["accuracy_key"] == key
    if strategy in ("fedper", "fedrep"):
        assert key == "personal/acc/traffic_class"
        assert all(0 <= r["personal/local_acc/traffic_class"] <= 1 for r in orchestrator.history)


def test_fedprox_with_mu_zero_equals_fedavg_exactly(tmp_path):
    fedavg = _run(_cfg(tmp_path / "a"))
    fedprox = _run(_cfg(tmp_path / "b", "federated.strategy=fedprox", "federated.proximal_mu=0"))
    for key, value in fedavg.global_state.items():
        assert torch.equal(value, fedprox.global_state[key]), key
    pulled = _run(_cfg(tmp_path / "c", "federated.strategy=fedprox", "federated.proximal_mu=1.0"))
    assert not torch.equal(pulled.global_state["trunk.layers.0.weight"], fedavg.global_state["trunk.layers.0.weight"])


def test_proximal_term_adds_mu_times_the_distance_to_the_global_weights():
    model = torch.nn.Linear(2, 1)
    anchor = {"weight": torch.zeros(1, 2), "bias": torch.zeros(1)}
    with torch.no_grad():
        model.weight.fill_(3.0)
    model.weight.grad = torch.ones(1, 2)
    model.bias.grad = torch.zeros(1)
    ProximalTerm(anchor, mu=0.5).on_before_optimizer_step(None, model, None)
    assert torch.allclose(model.weight.grad, torch.full((1, 2), 1.0 + 0.5 * 3.0))


def test_scaffold_control_variates_sum_as_the_method_states(tmp_path):
    orchestrator = _run(_cfg(tmp_path, "federated.strategy=scaffold", rounds=3))
    server = orchestrator.strategy.control
    samples = {c: len(s) for c, s in enumerate(orchestrator.data.clients)}
    total = sum(samples.values())
    # Every base station takes part in every round (fraction 1), c starts at 0 and moves by the
    # sample-weighted mean of the deltas: c stays the sample-weighted mean of the c_i.
    for name, c in server.items():
        mean = sum(orchestrator.client_states[k]["strategy"][CONTROL + name].double() * n for k, n in samples.items()) / total
        assert torch.allclose(c.double(), mean, atol=1e-6), name
    assert any(c.abs().sum() > 0 for c in server.values())
    # Control variates travel both ways beside the model: their bytes are counted.
    params = sum(p.numel() * p.element_size() for p in orchestrator.model.parameters())
    record = orchestrator.history[-1]
    model_bytes = state_nbytes(orchestrator.global_state)
    assert record[f"comm/bytes_up/{TIER_EDGE}"] == 3 * (model_bytes + params)
    assert record[f"comm/bytes_down/{TIER_EDGE}"] == 3 * (model_bytes + params)


def test_fedper_never_sends_head_weights(tmp_path):
    orchestrator = _run(_cfg(tmp_path, "federated.strategy=fedper"))
    trunk_bytes = sum(t.numel() * t.element_size() for k, t in orchestrator.global_state.items()
                      if not k.startswith("heads."))
    assert trunk_bytes < state_nbytes(orchestrator.global_state)
    assert not any(k.startswith("heads.") for k in orchestrator.payload)
    for record in orchestrator.history:
        assert record[f"comm/bytes_up/{TIER_EDGE}"] == 3 * trunk_bytes
        assert record[f"comm/bytes_down/{TIER_EDGE}"] == 3 * trunk_bytes
    # The heads stayed on the base stations: personal, different from each other, never averaged.
    key = "heads.traffic_class.net.weight" if "heads.traffic_class.net.weight" in orchestrator.global_state else next(
        k for k in orchestrator.global_state if k.startswith("heads.traffic_class") and k.endswith("weight"))
    heads = [orchestrator.client_states[c]["strategy"][key] for c in range(3)]
    assert not torch.equal(heads[0], heads[1])
    assert torch.equal(orchestrator.global_state[key], orchestrator.initial_state[key])


class _TrunkAfterFirstEpoch(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            self.trunk = {k: v.detach().clone() for k, v in pl_module.trunk.state_dict().items()}


def test_fedrep_trains_heads_alone_then_the_trunk(tmp_path):
    orchestrator = build_orchestrator(_cfg(tmp_path, "federated.strategy=fedrep"))
    orchestrator.start_round(1)
    start = {k: v.clone() for k, v in orchestrator.model.trunk.state_dict().items()}
    seen = _TrunkAfterFirstEpoch()
    fit = orchestrator.runtime.fit(0, orchestrator.data.clients[0], orchestrator.payload, rnd=1, seed=1,
                                   extra_callbacks=[seen])
    for key, value in start.items():  # the head epoch moved nothing in the trunk, BatchNorm statistics included
        assert torch.equal(seen.trunk[key], value), key
    assert not torch.equal(fit.upload["trunk.layers.0.weight"], orchestrator.payload["trunk.layers.0.weight"])
    assert all(p.requires_grad for p in orchestrator.model.parameters())


@pytest.mark.slow  # three strategies, 6 rounds each
@pytest.mark.parametrize("strategy", ["scaffold", "fedper", "fedadam"])
def test_strategy_state_resumes_exactly(strategy, tmp_path):
    whole = _run(_cfg(tmp_path / "whole", f"federated.strategy={strategy}", rounds=3))
    first = _run(_cfg(tmp_path / "first", f"federated.strategy={strategy}", rounds=2))
    saved = copy.deepcopy(first.state_dict())
    resumed = build_orchestrator(_cfg(tmp_path / "resumed", f"federated.strategy={strategy}", rounds=3))
    resumed.load_state_dict(saved)
    resumed.run()
    for key, value in whole.global_state.items():
        assert torch.equal(value, resumed.global_state[key]), key
