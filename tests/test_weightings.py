"""Gradient-based weightings (torchjd) and FAMO: they train by name, inside Lightning, and stay finite."""

from __future__ import annotations

import pytest
import torch

from fedaux.config import load_config
from fedaux.model import build_model
from fedaux.model.weighting.famo import FAMO
from fedaux.model.weighting.gradient import GradientAggregation
from fedaux.train import build_orchestrator
from tests.conftest import REPO

GRADIENT = ["mgda", "pcgrad", "cagrad", "nash_mtl", "upgrad"]
TARGETS = {"traffic_class": 5, "bandwidth": 5, "duration": 4}


def _cfg(*overrides):
    return load_config(REPO / "conf" / "quic.yaml", list(overrides))


@pytest.mark.parametrize("name", [*(g if g != "nash_mtl" else pytest.param(g, marks=pytest.mark.slow) for g in GRADIENT),
                                  "famo"])
def test_each_weighting_trains_two_rounds_by_name_and_logs_its_weights(name, tmp_path):
    cfg = _cfg(f"output_dir={tmp_path}", f"model.weighting.name={name}", "data.subflows_per_flow=2",
               "federated.rounds=2", "federated.base_stations=2", "federated.edge_servers=2", "logging.energy=false",
               "logging.progress=false", "logging.plots=false", "logging.wandb.mode=disabled")
    orchestrator = build_orchestrator(cfg)
    orchestrator.run()
    assert orchestrator.model.automatic_optimization == (name == "famo")
    for record in orchestrator.history:
        weights = [record[f"train/weight/{t}"] for t in ("traffic_class", "bandwidth", "duration")]
        assert all(torch.isfinite(torch.tensor(w)) for w in weights), weights
        assert 0 <= record["val/acc/traffic_class"] <= 1
    assert torch.isfinite(torch.tensor(orchestrator.history[-1]["train/global_loss"]))


def _batch_without_main_labels():
    torch.manual_seed(0)
    return {"x": torch.randn(16, 3, 60), "traffic_class": torch.full((16,), -100),
            "bandwidth": torch.randint(0, 5, (16,)), "duration": torch.randint(0, 4, (16,))}


@pytest.mark.parametrize("name", GRADIENT)
def test_gradient_methods_give_finite_weights_on_a_batch_with_no_main_labels(name):
    model = build_model(_cfg(f"model.weighting.name={name}").model, TARGETS, 60, in_channels=3)
    assert isinstance(model.weighting, GradientAggregation)
    batch = _batch_without_main_labels()
    features = model.trunk(batch["x"])
    losses = [model._losses[t](model.heads[t](features), batch[t]) for t in model.task_names]
    assert losses[0].item() == 0.0
    weights = model.weighting.backward(losses, features, list(model.trunk.parameters()),
                                       [list(model.heads[t].parameters()) for t in model.task_names])
    assert weights.shape == (3,) and torch.isfinite(weights).all(), weights
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # Each head learns from its own loss only; the main head, with no label, gets a zero gradient.
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.heads["traffic_class"].parameters())


def test_famo_weights_match_its_objective_and_stay_finite_without_main_labels():
    famo = FAMO(["main", "a", "b"], "main")
    losses = torch.tensor([0.0, 1.5, 0.3], requires_grad=True)
    weights = famo.weights(losses.detach())
    assert torch.isfinite(weights).all()
    # The weights are the gradient of FAMO's objective sum_i z_i log(l_i + eps) / c, taken through l.
    z = torch.softmax(famo.logits, 0)
    c = (z / (losses.detach() + 1e-8)).sum()
    objective = (z * (losses + 1e-8).log() / c).sum()
    (grad,) = torch.autograd.grad(objective, losses)
    assert torch.allclose(grad, weights, rtol=1e-5)


def test_famo_moves_weight_toward_the_task_whose_loss_fell_least():
    famo = FAMO(["main", "a"], "main", lr=0.1, gamma=0.0)
    famo.train()
    famo.start_fit()
    for _ in range(20):
        famo.weights(torch.tensor([1.0, 1.0]))
        famo.after_step(torch.tensor([0.5, 0.99]))  # main falls fast, "a" hardly
    z = torch.softmax(famo.logits, 0)
    assert z[1] > z[0]
    assert "weighting._adam" not in dict(torch.nn.Module.state_dict(famo))
    assert set(famo.state_dict()) == {"logits"}


def test_famo_steps_its_logits_outside_a_fit_without_start_fit():
    # after_step makes the logits' Adam itself when no fit started one, keeping the saved losses.
    famo = FAMO(["main", "a"], "main", lr=0.1, gamma=0.0)
    famo.train()
    famo.weights(torch.tensor([1.0, 1.0]))
    famo.after_step(torch.tensor([0.5, 0.99]))
    z = torch.softmax(famo.logits, 0)
    assert z[1] > z[0]


def test_gradient_method_clips_and_runs_strategy_hooks_under_manual_optimisation(tmp_path):
    cfg = _cfg(f"output_dir={tmp_path}", "model.weighting.name=upgrad", "federated.strategy=fedprox",
               "federated.proximal_mu=0", "data.subflows_per_flow=4", "federated.rounds=1", "federated.base_stations=2",
               "federated.edge_servers=2", "logging.energy=false", "logging.progress=false", "logging.plots=false",
               "logging.wandb.mode=disabled")
    orchestrator = build_orchestrator(cfg)
    orchestrator.start_round(1)
    hooks = orchestrator.strategy.client_callbacks(orchestrator.model, orchestrator.payload, {})
    fit = orchestrator.runtime.fit(0, orchestrator.data.clients[0], orchestrator.payload, rnd=1, seed=3,
                                   extra_callbacks=hooks)
    assert hooks[0].steps > 0  # on_before_optimizer_step ran for every manual step
    assert orchestrator.model.manual_clip_val == 1.0
    assert set(fit.upload) == set(orchestrator.payload)
