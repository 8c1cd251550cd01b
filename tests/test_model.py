"""The multi-task model: shapes, heads by config, weighting strategies, label-free batches."""

from __future__ import annotations

import re

import lightning as L
import pytest
import torch

from fedaux.config import load_config
from fedaux.data.datamodule import ClientDataModule
from fedaux.data.samples import build_federated_data
from fedaux.model import build_model
from fedaux.model.trunk import ConvTrunk
from fedaux.model.weighting import WEIGHTINGS, build_weighting
from tests.conftest import REPO

TASKS = ["traffic_class", "bandwidth", "duration"]


TARGETS = {"traffic_class": 5, "bandwidth": 5, "duration": 4}  # classes per target: all the model needs


def _cfg(*overrides):
    return load_config(REPO / "conf" / "quic.yaml", list(overrides))


@pytest.mark.parametrize("packets", [8, 20, 60, 100])
def test_output_shapes_for_several_window_lengths(packets):
    model = build_model(_cfg().model, TARGETS, packets, in_channels=2)
    out = model(torch.randn(7, 2, packets))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"traffic_class": (7, 5), "bandwidth": (7, 5), "duration": (7, 4)}


def test_default_trunk_matches_the_reference_size():
    trunk = ConvTrunk(packets=60, in_channels=3)
    n = sum(p.numel() for p in trunk.parameters())
    assert 0.25e6 < n < 0.45e6
    assert trunk(torch.zeros(2, 3, 60)).shape == (2, 256)


def test_single_task_configuration_has_no_auxiliary_parameters():
    single = build_model(_cfg("model.heads.bandwidth=null", "model.heads.duration=null").model, TARGETS, 60, in_channels=2)
    assert list(single.heads) == ["traffic_class"]
    assert not [n for n, _ in single.named_parameters() if "bandwidth" in n or "duration" in n]
    multi = build_model(_cfg().model, TARGETS, 60, in_channels=2)
    extra = sum(p.numel() for p in multi.parameters()) - sum(p.numel() for p in single.parameters())
    assert extra == (256 + 1) * (5 + 4)


def test_a_new_head_added_by_config_alone_trains(tmp_path, monkeypatch):
    (tmp_path / "extra_heads.py").write_text(
        "import torch\n"
        "class Mlp(torch.nn.Module):\n"
        "    def __init__(self, in_features, out_features, hidden):\n"
        "        super().__init__()\n"
        "        self.net = torch.nn.Sequential(torch.nn.Linear(in_features, 16), torch.nn.Tanh(), torch.nn.Linear(16, out_features))\n"
        "    def forward(self, x):\n"
        "        return self.net(x)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = _cfg(
        "data.targets.upload={fn: upload_fraction, bins: [0.2, 0.5]}",
        "data.targets.log_duration={fn: duration}",
        "model.heads.upload={target: upload, cls: 'extra_heads:Mlp'}",
        "model.heads.seconds={target: log_duration, kind: regression, loss: smooth_l1}",
        "data.subflows_per_flow=2", "data.packets=20",
    )
    data = build_federated_data(cfg.data, 1, 1, seed=0)
    model = build_model(cfg.model, data.target_classes, cfg.data.packets, len(cfg.data.features))
    assert model.heads["upload"].__class__.__name__ == "Mlp" and model.tasks["upload"].out_features == 3
    before = {k: v.clone() for k, v in model.heads.state_dict().items()}
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_train_batches=3)
    trainer.fit(model, ClientDataModule(data.clients[0], batch_size=16))
    after = model.heads.state_dict()
    assert not torch.equal(before["upload.net.0.weight"], after["upload.net.0.weight"])
    assert not torch.equal(before["seconds.net.weight"], after["seconds.net.weight"])
    assert "train/loss/seconds" in trainer.callback_metrics and "train/weight/upload" in trainer.callback_metrics


def test_random_weights_are_fresh_non_negative_and_sum_to_one():
    torch.manual_seed(0)
    rlw = build_weighting(_cfg().model.weighting, TASKS, "traffic_class")
    draws = torch.stack([rlw.weights(torch.ones(3)) for _ in range(50)])
    assert (draws[:, 0] == 1).all()  # the main task keeps weight 1
    aux = draws[:, 1:]
    assert (aux >= 0).all() and torch.allclose(aux.sum(1), torch.ones(50))
    assert len({tuple(row.tolist()) for row in aux}) == 50
    drawn_all = build_weighting(_cfg("model.weighting.draw_main=true").model.weighting, TASKS, "traffic_class")
    assert torch.allclose(drawn_all.weights(torch.ones(3)).sum(), torch.tensor(1.0))


def test_equal_and_fixed_reproduce_a_hand_computed_total():
    losses = torch.tensor([0.5, 2.0, 4.0])
    equal = build_weighting(_cfg("model.weighting.name=equal").model.weighting, TASKS, "traffic_class")
    assert equal(losses)[0].item() == pytest.approx(6.5)
    fixed = build_weighting(
        _cfg("model.weighting.name=fixed", "model.weighting.weights={traffic_class: 1.0, bandwidth: 0.25, duration: 0.1}").model.weighting,
        TASKS, "traffic_class")
    total, weights = fixed(losses)
    assert total.item() == pytest.approx(0.5 + 0.5 + 0.4) and weights.tolist() == pytest.approx([1.0, 0.25, 0.1])
    with pytest.raises(ValueError, match=r"missing \['duration'\]"):
        build_weighting(_cfg("model.weighting.name=fixed", "model.weighting.weights={traffic_class: 1, bandwidth: 1}").model.weighting,
                        TASKS, "traffic_class")


def test_uncertainty_parameters_receive_gradients():
    model = build_model(_cfg("model.weighting.name=uncertainty").model, TARGETS, 60, in_channels=2)
    batch = {"x": torch.randn(8, 2, 60), "traffic_class": torch.randint(0, 5, (8,)),
             "bandwidth": torch.randint(0, 5, (8,)), "duration": torch.randint(0, 4, (8,))}
    loss = model.weighting(model.task_losses(batch)[1])[0]
    loss.backward()
    grad = model.weighting.log_vars.grad
    assert grad is not None and (grad != 0).all()


def test_dwa_weights_follow_the_loss_ratios():
    dwa = build_weighting(_cfg("model.weighting.name=dwa").model.weighting, TASKS, "traffic_class")
    for epoch_losses in ([1.0, 1.0, 1.0], [0.5, 1.0, 2.0]):
        dwa.weights(torch.tensor(epoch_losses))
        dwa.on_epoch_end()
    weights = dwa.weights(torch.ones(3))
    assert weights.sum().item() == pytest.approx(3.0)
    assert weights[0] < weights[1] < weights[2]  # the task whose loss fell most gets least weight


def test_unknown_weighting_lists_the_valid_ones():
    cfg = _cfg().model.weighting
    cfg.name = "magic"
    valid = ['cagrad', 'dwa', 'equal', 'famo', 'fixed', 'mgda', 'nash_mtl', 'pcgrad', 'random', 'uncertainty', 'upgrad']
    with pytest.raises(ValueError, match=r"'magic' is not valid; choose one of " + re.escape(str(valid))):
        build_weighting(cfg, TASKS, "traffic_class")
    assert set(WEIGHTINGS.names()) == set(valid)


@pytest.mark.parametrize("weighting", sorted(set(WEIGHTINGS.names()) - {"fixed"}))
def test_a_batch_without_main_labels_gives_a_finite_loss(weighting):
    model = build_model(_cfg(f"model.weighting.name={weighting}").model, TARGETS, 60, in_channels=2)
    batch = {"x": torch.randn(8, 2, 60), "traffic_class": torch.full((8,), -100),
             "bandwidth": torch.randint(0, 5, (8,)), "duration": torch.randint(0, 4, (8,))}
    outputs, losses = model.task_losses(batch)
    assert losses[0].item() == 0.0
    total, _ = model.weighting(losses)
    assert torch.isfinite(total)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
