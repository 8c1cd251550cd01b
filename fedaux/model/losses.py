"""Per-task losses by name (``model.heads.<task>.loss``).

A loss maps a head's output and its target to a scalar: ``(B, out_features)``, ``(B,)`` -> ``()``.
Classification targets may hold :data:`~fedaux.labels.IGNORE_INDEX` (no label).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from fedaux.labels import IGNORE_INDEX
from fedaux.registry import Registry

TaskLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: Registry[TaskLoss] = Registry("task loss", "model.heads.<task>.loss")
DEFAULT_LOSS = {"classification": "cross_entropy", "regression": "mse"}


@LOSSES.register("cross_entropy")
def masked_cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled samples; exactly 0 for a batch with none.

    Example:
        >>> logits = torch.zeros(2, 3)
        >>> float(masked_cross_entropy(logits, torch.tensor([IGNORE_INDEX, IGNORE_INDEX])))
        0.0
    """
    # Sum over labelled samples divided by their count (at least 1): a batch with no labels gives
    # exactly 0 instead of the NaN that a mean over zero elements would give, with no host sync.
    labelled = (target != IGNORE_INDEX).sum().clamp_min(1)
    return F.cross_entropy(output, target, ignore_index=IGNORE_INDEX, reduction="sum") / labelled


class RegressionLoss:
    """A regression head's loss: ``fn(output.squeeze(-1), target)`` with the target cast to the output's dtype.

    A class at module level, not a closure, so a model holding it pickles into worker processes
    and Flower nodes (``fn`` is a module-level function, pickled by reference).

    Example:
        >>> float(RegressionLoss(F.mse_loss)(torch.tensor([[1.0], [3.0]]), torch.tensor([0, 3])))
        0.5
    """

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.fn = fn

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.fn(output.squeeze(-1), target.to(output.dtype))

    def __repr__(self) -> str:
        return f"RegressionLoss({self.fn.__name__})"


LOSSES.register("mse")(RegressionLoss(F.mse_loss))
LOSSES.register("l1")(RegressionLoss(F.l1_loss))
LOSSES.register("smooth_l1")(RegressionLoss(F.smooth_l1_loss))
