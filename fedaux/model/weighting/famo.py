"""FAMO (Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023): a loss-only
method that balances tasks by the rate their losses fall, at O(1) cost per step.

FAMO minimises ``sum_i z_i log(l_i - l_i*) / c`` with ``z = softmax(w)`` and ``c = sum_i z_i / (l_i - l_i*)``
(``l_i* = 0`` here). Its gradient equals that of ``sum_i a_i l_i`` with ``a_i = z_i / (c (l_i - l_i*))``,
which is what :meth:`weights` returns (so the update is FAMO's and the weights can be logged).
After each optimiser step the module re-evaluates the same batch and :meth:`after_step` moves the
logits ``w`` with Adam (learning rate ``famo_lr``, weight decay ``famo_gamma``) along the
softmax Jacobian applied to the fall in log-loss, as in the authors' code
(https://github.com/Cranial-XIX/FAMO).

The logits are a buffer of the model: they travel and are averaged with it, so the federation
shares one task balance; the logits' Adam moments start afresh in every local fit, like the
model's optimiser.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import torch

from fedaux.errors import ConfigError
from fedaux.model.weighting.base import WEIGHTINGS, LossWeighting

_EPS = 1e-8  # FAMO's floor on l_i - l_i*, so a task with zero loss (no labels in the batch) stays finite


class _LogitsAdam(TypedDict):
    """The logits' own Adam: a parameter copy of the logits and its optimiser."""

    param: torch.nn.Parameter
    optimizer: torch.optim.Adam


@WEIGHTINGS.register("famo")
class FAMO(LossWeighting):
    """Fast adaptive multitask optimisation; ``(T,)`` logits updated after every step."""

    logits: torch.Tensor  # (T,) buffer, registered in __init__

    def __init__(self, tasks: Sequence[str], main_task: str, lr: float = 0.025, gamma: float = 0.001) -> None:
        super().__init__(tasks, main_task)
        if lr <= 0 or gamma < 0:
            raise ConfigError(f"model.weighting.famo_lr={lr} must be > 0 and famo_gamma={gamma} >= 0")
        self.lr, self.gamma = lr, gamma
        self.register_buffer("logits", torch.zeros(len(self.tasks)))
        # The logits' Adam works on a copy outside the module's parameters (a plain dict is not
        # registered), so neither the model's optimiser nor its state dict sees it.
        self._adam: _LogitsAdam | None = None
        self._previous: torch.Tensor | None = None

    @classmethod
    def from_config(cls, cfg, tasks, main_task):
        return cls(tasks, main_task, lr=cfg.famo_lr, gamma=cfg.famo_gamma)

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._previous = losses.detach().clone()
        z = torch.softmax(self.logits, dim=0)
        shifted = losses.detach().clamp_min(0) + _EPS
        c = (z / shifted).sum()
        return z / (c * shifted)

    def start_fit(self) -> None:
        """A fresh Adam for the logits at the start of every local fit."""
        self._adam = self._new_adam()
        self._previous = None

    def _new_adam(self) -> _LogitsAdam:
        param = torch.nn.Parameter(self.logits.detach().clone())
        return {"param": param, "optimizer": torch.optim.Adam([param], lr=self.lr, weight_decay=self.gamma)}

    def after_step(self, losses: torch.Tensor) -> None:
        """Update the logits from the losses of the same batch before (saved) and after the step."""
        if self._previous is None:
            return
        if self._adam is None:  # outside a fit (no start_fit): an Adam, keeping the saved losses
            self._adam = self._new_adam()
        delta = (self._previous.clamp_min(0) + _EPS).log() - (losses.detach().clamp_min(0) + _EPS).log()
        with torch.enable_grad():
            param, optimizer = self._adam["param"], self._adam["optimizer"]
            param.data.copy_(self.logits)
            (grad,) = torch.autograd.grad(torch.softmax(param, dim=0), param, grad_outputs=delta.to(param.dtype))
        optimizer.zero_grad()
        param.grad = grad
        optimizer.step()
        with torch.no_grad():
            self.logits.copy_(param.detach())
        self._previous = None
