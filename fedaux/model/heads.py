"""Task heads: small modules mapping the trunk's features to one task's outputs."""

from __future__ import annotations

import torch
from torch import nn


class TaskHead(nn.Module):
    """A linear head, or one hidden layer then linear when ``hidden > 0``.

    Shape:
        input ``(B, in_features)`` -> output ``(B, out_features)`` (logits, or values for regression).
    """

    def __init__(self, in_features: int, out_features: int, hidden: int = 0) -> None:
        super().__init__()
        if out_features < 1:
            raise ValueError(f"a head needs out_features >= 1, got {out_features}")
        self.net: nn.Module
        if hidden > 0:
            self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features))
        else:
            self.net = nn.Linear(in_features, out_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)
