"""The interface every loss weighting strategy implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from fedaux.errors import ConfigError
from fedaux.registry import Registry


class LossWeighting(nn.Module):
    """Combines per-task losses into one total.

    A strategy never calls ``backward()``: it returns the total so Lightning's automatic
    optimisation still works, and the weights it used so they can be logged.

    Args:
        tasks: task names, in the order of the loss vector; ``main_task`` is one of them.

    Shape:
        ``forward(losses)``: losses ``(T,)`` -> ``(total: (), weights: (T,))``.
    """

    def __init__(self, tasks: Sequence[str], main_task: str) -> None:
        super().__init__()
        if main_task not in tasks:
            raise ConfigError(f"main task {main_task!r} is not among the tasks {list(tasks)}")
        self.tasks = list(tasks)
        self.main_index = self.tasks.index(main_task)

    @classmethod
    def from_config(cls, cfg, tasks: Sequence[str], main_task: str) -> LossWeighting:
        """Build from the ``model.weighting`` config section; strategies with options override it."""
        return cls(tasks, main_task)

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        """``(T,)`` weights for this step; ``losses`` ``(T,)`` may inform them but carries no grad."""
        raise NotImplementedError

    def forward(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.weights(losses.detach())
        return (weights * losses).sum(), weights

    def on_epoch_end(self) -> None:
        """Called at the end of each training epoch; strategies with loss history use it."""

    def start_fit(self) -> None:
        """Called when a local fit starts: drop any state left by the previous fit of this model
        object, which may have been another base station's (one model object trains them in turn)."""

    def local_state(self) -> dict[str, torch.Tensor]:
        """What this weighting keeps between a base station's local fits (e.g. DWA's loss history).

        The base station keeps it with its other local state (personal heads, control variates):
        never sent, never averaged, restored by :meth:`load_local_state` before its next fit, so a
        fit depends only on its own base station's past, whichever process or node runs it.
        """
        return {}

    def load_local_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`local_state` before a fit; ``{}`` (a base station's first fit) starts fresh."""


@runtime_checkable
class GradientWeighting(Protocol):
    """A strategy that needs each task's gradient (``needs_gradients = True``): it fills the ``.grad``
    of the trunk and heads itself (see :class:`~fedaux.model.weighting.gradient.GradientAggregation`)."""

    def backward(self, losses: Sequence[torch.Tensor], features: torch.Tensor, shared_params: Sequence[torch.Tensor],
                 task_params: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor: ...


@runtime_checkable
class SteppedWeighting(Protocol):
    """A strategy told each batch's losses after the optimiser step (loss-rate methods such as FAMO)."""

    def after_step(self, losses: torch.Tensor) -> None: ...


# Every strategy module in this package registers its class here with ``@WEIGHTINGS.register(name)``;
# the package imports each of its modules, so a new strategy is one file.
WEIGHTINGS: Registry[type[LossWeighting]] = Registry("loss weighting", "model.weighting.name")
