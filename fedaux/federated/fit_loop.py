"""A base station's local fit without a Trainer: the LightningModule's own hooks, in Lightning's order.

Why: a federated round fits every selected base station once, and most base stations hold a few
batches. ``Trainer.fit`` adds set-up, logging and teardown to every call whatever the fit's size:
with the same windows over 10 to 1,000 base stations each extra fit cost 16.5 ms with a Trainer
and 5.2 ms with this loop (``benchmarks/bench_fit_loop.py``, 2-core AMD EPYC VM, one thread), so
1,000 base stations took 1.67x the 10-base-station round with the Trainer and 1.22x with this
loop. :class:`DirectFitLoop` runs the same
computation with none of that: the module's ``configure_optimizers``, ``training_step`` and
hooks, and the fit's Lightning callbacks, called in the order ``Trainer.fit`` calls them
(Lightning 2.x automatic optimisation: ``on_train_batch_start``, ``training_step``,
``on_before_zero_grad``, ``optimizer_zero_grad``, ``on_before_backward``, backward,
``on_after_backward``, ``on_before_optimizer_step``, norm clipping over the optimiser's
parameters, ``optimizer.step``, ``on_train_batch_end``), callbacks before the module as Lightning
does. The weights it leaves are bit-identical to ``Trainer.fit``'s
(``tests/test_fit_loop.py`` checks every strategy, weighting family and semi-supervised option
with ``torch.equal``).

It covers what fedaux's fits use; :func:`direct_fit_blocker` says why a fit needs the Trainer
instead (``federated.fit_loop=auto`` then takes it): manual optimisation (gradient-based
weightings step by hand through ``self.optimizers()``), DP-SGD (Opacus wraps the optimiser from the
Trainer's datamodule), an accelerator or precision other than 32-bit on the CPU, a module that
overrides ``configure_gradient_clipping`` or returns more than one optimiser, and a Lightning
callback that has not declared it reads no more of the Trainer than this loop offers
(:data:`DIRECT_FIT_SAFE`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch

from fedaux.federated.client import TrainerOptions

FIT_LOOPS = ("auto", "trainer")  # federated.fit_loop: the direct loop where it applies, or always the Trainer

DIRECT_FIT_SAFE = "direct_fit_safe"
"""Class attribute a Lightning callback sets to True when it reads only what :class:`DirectFitLoop`
offers as its ``trainer`` argument: ``current_epoch``, ``global_step``, ``max_epochs``,
``datamodule``, ``optimizers`` and ``lightning_module``."""


def direct_fit_blocker(model: L.LightningModule, callbacks: Sequence[L.Callback], options: TrainerOptions,
                       dp_sgd: bool) -> str | None:
    """Why this fit needs Lightning's Trainer (one phrase), or None where :class:`DirectFitLoop` computes it."""
    if not model.automatic_optimization:
        return "the loss weighting optimises by hand (manual optimisation)"
    if dp_sgd:
        return "DP-SGD wraps the optimiser through the Trainer"
    if not options.on_cpu or options.precision not in ("32-true", "32"):
        return f"trainer.accelerator={options.accelerator!r} / precision={options.precision!r} (the direct loop is 32-bit on the CPU)"
    if type(model).configure_gradient_clipping is not L.LightningModule.configure_gradient_clipping:
        return f"{type(model).__name__} overrides configure_gradient_clipping"
    for callback in callbacks:
        if not getattr(type(callback), DIRECT_FIT_SAFE, False):
            return (f"the Lightning callback {type(callback).__qualname__} may read the Trainer "
                    f"(set {type(callback).__qualname__}.{DIRECT_FIT_SAFE} = True if it reads only current_epoch, "
                    "global_step, max_epochs, datamodule, optimizers)")
    return None


def _hook(callbacks: Sequence[L.Callback], model: L.LightningModule, loop: DirectFitLoop, name: str, *args: Any) -> Any:
    """Lightning's order: every callback's hook, then the module's; the module's return value."""
    for callback in callbacks:
        getattr(callback, name)(loop, model, *args)
    return getattr(model, name)(*args)


class DirectFitLoop:
    """One local fit of a LightningModule, as ``Trainer.fit`` would run it, with no Trainer.

    The object is also the ``trainer`` argument its callbacks receive (:data:`DIRECT_FIT_SAFE`).

    Args:
        max_epochs: local epochs.
        gradient_clip_val: the L2 norm to clip each step's gradients to (None or <= 0: no clipping).
        callbacks: Lightning callbacks, each declared :data:`DIRECT_FIT_SAFE`.
    """

    def __init__(self, max_epochs: int, gradient_clip_val: float | None, callbacks: Sequence[L.Callback] = ()) -> None:
        self.max_epochs, self.gradient_clip_val = max_epochs, gradient_clip_val
        self.callbacks = list(callbacks)
        self.current_epoch = self.global_step = 0
        self.datamodule: L.LightningDataModule | None = None
        self.lightning_module: L.LightningModule | None = None
        self.optimizers: list[torch.optim.Optimizer] = []

    def fit(self, model: L.LightningModule, datamodule: L.LightningDataModule) -> None:
        """Train ``model`` on ``datamodule.train_dataloader()`` for ``max_epochs`` epochs."""
        callbacks = self.callbacks
        self.datamodule, self.lightning_module = datamodule, model
        # A module keeps the last Trainer it was attached to (the evaluator's, an earlier fit's);
        # detached here, its self.log calls are skipped instead of landing in that Trainer's results.
        attached = model._trainer
        model.trainer = None
        try:
            self._fit(model, datamodule, callbacks)
        finally:
            model.trainer = attached

    def _fit(self, model: L.LightningModule, datamodule: L.LightningDataModule, callbacks: list[L.Callback]) -> None:
        for callback in callbacks:
            callback.setup(self, model, "fit")  # type: ignore[arg-type]
        model.setup("fit")
        optimizer = model.configure_optimizers()
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"the direct fit loop takes one optimiser from configure_optimizers, not {type(optimizer).__name__}; "
                            "use federated.fit_loop=trainer")
        self.optimizers = [optimizer]
        loader = datamodule.train_dataloader()
        model.zero_grad()  # as Trainer._run_stage
        with torch.enable_grad():
            _hook(callbacks, model, self, "on_fit_start")
            _hook(callbacks, model, self, "on_train_start")
            for epoch in range(self.max_epochs):
                self.current_epoch = epoch
                _hook(callbacks, model, self, "on_train_epoch_start")
                # Exactly len(loader) batches, as Lightning takes from a sized loader: asking for one
                # more would run the sampler's final (empty) randperm, advancing its seeded generator,
                # and the next epoch's order would differ from the Trainer's.
                batches = iter(loader)
                for batch_idx in range(len(loader)):
                    batch = next(batches)
                    if _hook(callbacks, model, self, "on_train_batch_start", batch, batch_idx) == -1:
                        break  # Lightning ends the epoch here
                    self._step(model, optimizer, callbacks, batch, batch_idx)
                # Lightning calls the callbacks' epoch end, then the module's.
                _hook(callbacks, model, self, "on_train_epoch_end")
            self.current_epoch = self.max_epochs
            _hook(callbacks, model, self, "on_train_end")
            _hook(callbacks, model, self, "on_fit_end")
        for callback in callbacks:
            callback.teardown(self, model, "fit")  # type: ignore[arg-type]
        model.teardown("fit")

    def _step(self, model: L.LightningModule, optimizer: torch.optim.Optimizer, callbacks: list[L.Callback],
              batch: Any, batch_idx: int) -> None:
        output = model.training_step(batch, batch_idx)
        loss = output["loss"] if isinstance(output, Mapping) else output
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"training_step returned {type(output).__name__} under automatic optimisation, not a loss "
                            "tensor; use federated.fit_loop=trainer")
        _hook(callbacks, model, self, "on_before_zero_grad", optimizer)
        model.optimizer_zero_grad(self.current_epoch, batch_idx, optimizer)
        _hook(callbacks, model, self, "on_before_backward", loss)
        model.backward(loss)
        _hook(callbacks, model, self, "on_after_backward")
        _hook(callbacks, model, self, "on_before_optimizer_step", optimizer)
        clip = self.gradient_clip_val
        if clip is not None and clip > 0:  # Lightning's norm clipping: the optimiser's parameters, in group order
            torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], clip)
        optimizer.step()
        self.global_step += 1
        _hook(callbacks, model, self, "on_train_batch_end", {"loss": loss.detach()}, batch, batch_idx)
