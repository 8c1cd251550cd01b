"""Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, "Multi-Task Learning Using
Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedaux.model.weighting.base import WEIGHTINGS, LossWeighting


@WEIGHTINGS.register("uncertainty")
class UncertaintyWeighting(LossWeighting):
    """Learned log-variances ``s``: total = sum(exp(-s_i) * L_i + s_i).

    The ``+ s_i`` term stops the variances from growing without bound. ``s`` is a parameter, so it
    is trained (and, federated, averaged) with the network; the logged weights are ``exp(-s)``.
    """

    def __init__(self, tasks: Sequence[str], main_task: str) -> None:
        super().__init__(tasks, main_task)
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.log_vars.detach())

    def forward(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        precision = torch.exp(-self.log_vars)
        return (precision * losses + self.log_vars).sum(), precision.detach()
