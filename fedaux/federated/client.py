"""Lightning for base stations and the server: Trainer options, the reused per-thread Trainer of
local fits, a base station's own-model scores and the evaluator of the global model.

The fit itself is :meth:`fedaux.federated.runtime.ClientRuntime.fit`, which every engine runs.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import lightning as L
import torch

from fedaux.data.datamodule import HeldOutDataModule
from fedaux.data.samples import SampleSet
from fedaux.errors import ConfigError
from fedaux.federated.aggregation import load_state
from fedaux.labels import IGNORE_INDEX
from fedaux.model.module import MultiTaskModule

ACCELERATORS = ("auto", "cpu", "gpu", "mps")  # what a base station's Trainer may run on (trainer.accelerator)


def _available(accelerator: str) -> bool:
    if accelerator == "gpu":
        return torch.cuda.is_available()
    if accelerator == "mps":
        return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return True


@dataclass(frozen=True)
class TrainerOptions:
    """Where and how every client Trainer and the evaluator compute (the ``trainer`` config section).

    Attributes:
        accelerator: one of :data:`ACCELERATORS`; ``auto`` takes a GPU when there is one.
        devices: one device: ``"1"`` (the first) or one index (``"0,"``, ``"[2]"``). A base station
            fits on one device; several clients share a machine by taking turns.
        precision: Lightning's precision flag (``32-true``, ``bf16-mixed``, ``16-mixed``, ...).
    """

    accelerator: str = "auto"
    devices: str = "1"
    precision: str = "32-true"

    @classmethod
    def from_config(cls, trainer_cfg: Any) -> TrainerOptions:
        if trainer_cfg is None:
            return cls()
        return cls(str(trainer_cfg.accelerator), str(trainer_cfg.devices), str(trainer_cfg.precision))

    @property
    def on_cpu(self) -> bool:
        """Whether the Trainer will run on the CPU (``auto`` on a machine with no GPU or MPS)."""
        return self.accelerator == "cpu" or (self.accelerator == "auto" and not (_available("gpu") or _available("mps")))

    def device_arg(self) -> int | list[int]:
        text = self.devices.strip().strip("[]").rstrip(",").strip()
        if self.devices.strip() in ("1", "auto"):
            return 1
        if text.isdigit() and (self.devices.strip().endswith(",") or self.devices.strip().startswith("[")):
            return [int(text)]
        raise ConfigError(
            f"trainer.devices={self.devices!r}: a base station fits on one device; give '1' or one device index "
            "such as '0,' or '[1]'"
        )

    def check(self) -> None:
        """Refuse, with one clear line, an accelerator this machine does not have.

        Raises:
            ConfigError: an unknown accelerator, one not available here, or devices/precision that
                Lightning rejects.
        """
        if self.accelerator not in ACCELERATORS:
            raise ConfigError(f"trainer.accelerator={self.accelerator!r} is not valid; choose one of {list(ACCELERATORS)}")
        if not _available(self.accelerator):
            probe = "torch.cuda.is_available()" if self.accelerator == "gpu" else "torch.backends.mps.is_available()"
            raise ConfigError(
                f"trainer.accelerator={self.accelerator!r} but this machine has none ({probe} is False); "
                "use trainer.accelerator=auto or cpu"
            )
        try:
            with quiet_lightning():
                L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, **self.trainer_kwargs())
        except ConfigError:
            raise
        except Exception as err:  # Lightning's MisconfigurationException or ValueError on a bad flag
            raise ConfigError(
                f"trainer section (accelerator={self.accelerator!r}, devices={self.devices!r}, "
                f"precision={self.precision!r}) rejected by Lightning: {str(err).splitlines()[0]}"
            ) from None

    def trainer_kwargs(self) -> dict[str, Any]:
        """The Trainer arguments, worked out once (every client fit of every round asks)."""
        return dict(self._kwargs)

    @cached_property
    def _kwargs(self) -> dict[str, Any]:
        # Bit-for-bit repeatable runs on CPU. CUDA has kernels with no deterministic variant
        # (e.g. some scatter ops): there Lightning warns instead of failing.
        return {"accelerator": self.accelerator, "devices": self.device_arg(), "precision": self.precision,
                "deterministic": True if self.on_cpu else "warn"}


@contextmanager
def quiet_lightning():
    """Silence Lightning's per-Trainer banners and hints; per-client Trainers would print hundreds."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*defined a `validation_step` but have no `val_dataloader`.*")
        try:
            yield
        finally:
            logger.setLevel(level)


def client_trainer(local_epochs: int, gradient_clip_val: float | None, callbacks: Sequence[L.Callback] = (),
                   options: TrainerOptions | None = None) -> L.Trainer:
    """A lean Trainer for one local fit: no progress bar, logger, checkpointing or summary.

    One Trainer per thread and :class:`TrainerOptions` serves every fit, re-armed here with the
    fit's callbacks, clipping and epochs: building a Trainer scans every installed package's
    entry points for external callbacks, the largest fixed cost of a fit when each base station
    had its own. Its epoch count is reset so every fit starts at epoch 0 as on a new Trainer
    (Lightning creates the data iterator once more from the second epoch on, which draws from
    the loader's seeded generator: a fit is bit-identical to one on a new Trainer). ``fit``
    itself resets the logged metrics and builds the optimiser afresh; ``trainer.global_step``
    counts on. Per thread: a fit abandoned by ``client_timeout_s`` keeps its Trainer to itself.
    """
    options = options or TrainerOptions()
    trainers = _THREAD_TRAINERS.__dict__.setdefault("by_options", {})
    if options not in trainers:
        with quiet_lightning():
            trainers[options] = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                          enable_model_summary=False, num_sanity_val_steps=0,
                                          **options.trainer_kwargs())
    trainer = trainers[options]
    trainer.callbacks = list(callbacks)
    trainer.gradient_clip_val = gradient_clip_val
    trainer.fit_loop.max_epochs = local_epochs
    trainer.fit_loop.epoch_progress.reset()
    return trainer


_THREAD_TRAINERS = threading.local()


@torch.no_grad()
def personal_scores(model: MultiTaskModule, test: SampleSet, samples: SampleSet, batch_size: int = 1024) -> dict[str, float]:
    """A base station's own model scored on the held-out flows, two ways.

    * ``personal/acc/<main>``: window accuracy on all held-out windows (the global test set).
    * ``personal/local_acc/<main>``: the per-class accuracies on those windows weighted by this
      base station's class mix (the shares of its labelled windows): the accuracy to expect on
      its own traffic. Whole flows are held out of every base station, so its own held-out
      traffic is the test set reweighted, not flows it trained on.
    """
    task = model.main_task
    target = model.tasks[task].target
    device = model.device
    was_training = model.training
    model.eval()
    predicted = torch.cat([model(test.x[i:i + batch_size].to(device))[task].argmax(-1).cpu()
                           for i in range(0, len(test), batch_size)])
    model.train(was_training)
    labels = test.targets[target]
    known = labels != IGNORE_INDEX
    correct = (predicted == labels) & known
    classes = model.tasks[task].out_features
    per_class_total = torch.bincount(labels[known], minlength=classes).double()
    per_class_correct = torch.bincount(labels[correct], minlength=classes).double()
    own = samples.targets[target]
    mix = torch.bincount(own[own != IGNORE_INDEX], minlength=classes).double()
    mix = (mix * (per_class_total > 0)).clamp_min(0)
    if mix.sum() == 0:  # no labelled window: every class present in the test set counts alike
        mix = (per_class_total > 0).double()
    class_acc = per_class_correct / per_class_total.clamp_min(1)
    return {f"personal/acc/{task}": float(correct.sum() / known.sum().clamp_min(1)),
            f"personal/local_acc/{task}": float((mix * class_acc).sum() / mix.sum())}


class GlobalEvaluator:
    """Scores a global state on the held-out test flows with one reused Trainer."""

    def __init__(self, model: MultiTaskModule, test: SampleSet, batch_size: int,
                 trainer_options: TrainerOptions | None = None) -> None:
        self.model = model
        self.datamodule = HeldOutDataModule(test, batch_size=batch_size)
        with quiet_lightning():
            self.trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                     enable_model_summary=False, **(trainer_options or TrainerOptions()).trainer_kwargs())

    def __call__(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        load_state(self.model, state)
        # The global model has no base station's weighting history (DWA): val/loss must not
        # depend on which base station last trained this model object.
        self.model.weighting.load_local_state({})
        with quiet_lightning():
            results = self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)
        return {k: float(v) for k, v in results[0].items()}
