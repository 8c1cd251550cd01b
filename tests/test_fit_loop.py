"""The direct fit loop computes what Lightning's Trainer.fit computes, bit for bit, or steps aside.

Each case fits one real base station of the shrunk conf/quic.yaml twice (rounds 1 and 2, the
second from what the first kept locally) with ``federated.fit_loop=trainer`` and with the
direct loop, from the same payload, and compares every tensor of the model and of what the
base station sends and keeps with ``torch.equal``, and the reported metrics exactly.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch

from fedaux.federated.client import TrainerOptions
from fedaux.federated.fit_loop import DirectFitLoop, direct_fit_blocker
from fedaux.federated.runtime import ClientFit, ClientRuntime

CASES = {
    "fedavg, random weighting": [],
    "two local epochs, no clipping": ["federated.local_epochs=2", "federated.gradient_clip_val=null"],
    "fedprox": ["federated.strategy=fedprox"],
    "scaffold": ["federated.strategy=scaffold"],
    "fedrep (epoch-phased freezing)": ["federated.strategy=fedrep"],
    "fedper": ["federated.strategy=fedper"],
    "dwa (history across fits)": ["model.weighting.name=dwa"],
    "famo (a step after each step)": ["model.weighting.name=famo"],
    "equal weights": ["model.weighting.name=equal"],
    "pre-training round": ["federated.pretrain_rounds=1", "federated.rounds=3"],
    "fixmatch": ["model.consistency.weight=1.0", "model.consistency.threshold=0.3"],
    "contrastive head": ["model.heads.contrastive.kind=contrastive", "model.heads.contrastive.hidden=16"],
}


def _runtime(small_cfg, overrides: list[str], fit_loop: str) -> tuple[ClientRuntime, object]:
    from omegaconf import OmegaConf

    from fedaux.config import validate
    from fedaux.train import build_orchestrator

    cfg = OmegaConf.merge(small_cfg, OmegaConf.from_dotlist([*overrides, f"federated.fit_loop={fit_loop}"]))
    validate(cfg)
    server = build_orchestrator(cfg)
    return server.runtime, server


def _two_fits(runtime: ClientRuntime, server) -> list[tuple[ClientFit, dict[str, torch.Tensor]]]:
    out = []
    local_state = None
    for rnd in (1, 2):
        server.start_round(rnd)
        fit = runtime.fit(0, server.data.clients[0], server.payload, rnd, local_state)
        local_state = fit.local_state
        out.append((fit, {k: v.clone() for k, v in runtime.model.state_dict().items()}))
    return out


def _assert_equal_states(a, b, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        if isinstance(a[key], dict):
            _assert_equal_states(a[key], b[key], f"{what}/{key}")
        else:
            assert torch.equal(a[key], b[key]), f"{what}: {key} differs"


# Five cases in the fast suite (epochs, freezing by epoch, a step after each step, pseudo-labels);
# the rest with the slow tests.
FAST = ("fedavg, random weighting", "two local epochs, no clipping", "fedrep (epoch-phased freezing)",
        "famo (a step after each step)", "fixmatch")


@pytest.mark.parametrize("case", [c if c in FAST else pytest.param(c, marks=pytest.mark.slow) for c in CASES])
def test_direct_loop_leaves_the_trainers_weights_bit_for_bit(small_cfg, case):
    runtime_t, server_t = _runtime(small_cfg, CASES[case], "trainer")
    runtime_d, server_d = _runtime(small_cfg, CASES[case], "auto")
    model = runtime_d.model
    assert direct_fit_blocker(model, [], runtime_d.trainer_options, dp_sgd=False) is None, case
    for (fit_t, state_t), (fit_d, state_d) in zip(_two_fits(runtime_t, server_t), _two_fits(runtime_d, server_d)):
        _assert_equal_states(state_t, state_d, f"{case}: model")
        _assert_equal_states(fit_t.upload, fit_d.upload, f"{case}: upload")
        _assert_equal_states(fit_t.local_state, fit_d.local_state, f"{case}: local state")
        assert fit_t.num_samples == fit_d.num_samples
        assert fit_t.metrics == fit_d.metrics, case
        assert fit_d.metrics["train/loss"] > 0
        assert 0 < fit_d.loop_seconds <= fit_d.seconds


def test_fits_that_need_the_trainer_say_why(small_cfg):
    runtime, _ = _runtime(small_cfg, ["model.weighting.name=upgrad"], "auto")
    options = runtime.trainer_options
    assert "manual optimisation" in direct_fit_blocker(runtime.model, [], options, dp_sgd=False)
    plain, _ = _runtime(small_cfg, [], "auto")
    assert "DP-SGD" in direct_fit_blocker(plain.model, [], options, dp_sgd=True)
    assert "precision" in direct_fit_blocker(plain.model, [], TrainerOptions("cpu", "1", "bf16-mixed"), dp_sgd=False)

    class ReadsTheTrainer(L.Callback):
        pass

    reason = direct_fit_blocker(plain.model, [ReadsTheTrainer()], options, dp_sgd=False)
    assert "ReadsTheTrainer" in reason and "direct_fit_safe" in reason


def test_a_user_callback_runs_in_either_loop_with_lightnings_hook_order(small_cfg):
    """A callback that declares itself safe gets the same hooks, in the same order, from both loops."""

    class Recorder(L.Callback):
        direct_fit_safe = True

        def __init__(self) -> None:
            self.calls: list[str] = []

        def __getattribute__(self, name: str):
            attr = object.__getattribute__(self, name)
            if name.startswith("on_") and callable(attr):
                calls = object.__getattribute__(self, "calls")

                def record(*args, **kwargs):
                    calls.append(name)
                    return attr(*args, **kwargs)

                return record
            return attr

    orders = {}
    for loop in ("trainer", "auto"):
        runtime, server = _runtime(small_cfg, [], loop)
        server.start_round(1)
        recorder = Recorder()
        runtime.fit(0, server.data.clients[0], server.payload, 1, None, extra_callbacks=[recorder])
        orders[loop] = recorder.calls
    training = ("on_train_", "on_before_", "on_after_backward", "on_fit_")
    assert [c for c in orders["trainer"] if c.startswith(training)] == orders["auto"]
    assert orders["auto"].count("on_before_optimizer_step") >= 1


def test_direct_loop_refuses_what_it_cannot_run_with_the_fix():
    class TwoOptimisers(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def configure_optimizers(self):
            return [torch.optim.SGD(self.parameters(), 0.1), torch.optim.SGD(self.parameters(), 0.1)]

    class Data(L.LightningDataModule):
        def train_dataloader(self):
            return [torch.zeros(1, 2)]

    with pytest.raises(TypeError, match="federated.fit_loop=trainer"):
        DirectFitLoop(1, None).fit(TwoOptimisers(), Data())
