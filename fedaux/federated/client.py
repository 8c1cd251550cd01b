"""Local training on one base station and evaluation of the global model, with Lightning.

Both engines (in-process and Flower) use these functions, so a client trains the same way
wherever it runs.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import lightning as L
import numpy as np
import torch

from fedaux.data.datamodule import ClientDataModule, HeldOutDataModule
from fedaux.data.samples import SampleSet
from fedaux.errors import ConfigError
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


def derived_seed(*parts: int) -> int:
    """A 32-bit seed from the experiment seed, round and client: the same wherever it is computed."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


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


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a module's state dict (safe to keep while the module trains on)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def client_trainer(local_epochs: int, gradient_clip_val: float | None, callbacks: Sequence[L.Callback] = (),
                   options: TrainerOptions | None = None) -> L.Trainer:
    """A lean Trainer for one local fit: no progress bar, logger, checkpointing or summary."""
    return L.Trainer(
        max_epochs=local_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        gradient_clip_val=gradient_clip_val,
        callbacks=list(callbacks),
        **(options or TrainerOptions()).trainer_kwargs(),
    )


def train_client(
    model: MultiTaskModule,
    samples: SampleSet,
    global_state: dict[str, torch.Tensor],
    local_epochs: int,
    batch_size: int,
    seed: int,
    gradient_clip_val: float | None = None,
    callbacks: Sequence[L.Callback] = (),
    trainer_options: TrainerOptions | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float], float]:
    """Load ``global_state`` into ``model``, fit it on ``samples`` and return its new state.

    The state returned is on the CPU whatever device the fit used, so aggregation and byte counts
    are the same on any device.

    Returns:
        ``(state, train metrics, fit seconds)``; the metrics are the module's ``train/*`` epoch
        means of the last local epoch (``train/loss``, ``train/loss/<task>``, ``train/weight/<task>``).
    """
    model.load_state_dict(global_state)
    torch.manual_seed(seed)  # RLW draws and any dropout repeat exactly for this (round, client)
    start = time.perf_counter()
    with quiet_lightning():
        trainer = client_trainer(local_epochs, gradient_clip_val, callbacks, trainer_options)
        trainer.fit(model, ClientDataModule(samples, batch_size=batch_size, seed=seed))
    seconds = time.perf_counter() - start
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    return cpu_state(model), metrics, seconds


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
        self.model.load_state_dict(state)
        with quiet_lightning():
            results = self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)
        return {k: float(v) for k, v in results[0].items()}
