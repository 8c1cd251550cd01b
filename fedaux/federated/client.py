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

import lightning as L
import numpy as np
import torch

from fedaux.data.datamodule import ClientDataModule, HeldOutDataModule
from fedaux.data.samples import SampleSet
from fedaux.model.module import MultiTaskModule


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


def client_trainer(local_epochs: int, gradient_clip_val: float | None, callbacks: Sequence[L.Callback] = ()) -> L.Trainer:
    """A lean Trainer for one local fit: no progress bar, logger, checkpointing or summary."""
    return L.Trainer(
        max_epochs=local_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        gradient_clip_val=gradient_clip_val,
        callbacks=list(callbacks),
        deterministic=True,
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
) -> tuple[dict[str, torch.Tensor], dict[str, float], float]:
    """Load ``global_state`` into ``model``, fit it on ``samples`` and return its new state.

    Returns:
        ``(state, train metrics, fit seconds)``; the metrics are the module's ``train/*`` epoch
        means of the last local epoch (``train/loss``, ``train/loss/<task>``, ``train/weight/<task>``).
    """
    model.load_state_dict(global_state)
    torch.manual_seed(seed)  # RLW draws and any dropout repeat exactly for this (round, client)
    start = time.perf_counter()
    with quiet_lightning():
        trainer = client_trainer(local_epochs, gradient_clip_val, callbacks)
        trainer.fit(model, ClientDataModule(samples, batch_size=batch_size, seed=seed))
    seconds = time.perf_counter() - start
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    return cpu_state(model), metrics, seconds


class GlobalEvaluator:
    """Scores a global state on the held-out test flows with one reused Trainer."""

    def __init__(self, model: MultiTaskModule, test: SampleSet, batch_size: int) -> None:
        self.model = model
        self.datamodule = HeldOutDataModule(test, batch_size=batch_size)
        with quiet_lightning():
            self.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                     enable_progress_bar=False, enable_model_summary=False, deterministic=True)

    def __call__(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        self.model.load_state_dict(state)
        with quiet_lightning():
            results = self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)
        return {k: float(v) for k, v in results[0].items()}
