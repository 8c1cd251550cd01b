"""A task-head class named by import path (``model.heads.<task>.cls``)."""

import torch
from torch import nn


class WideHead(nn.Module):
    """Two hidden layers of 64 with a skip connection: ``(B, in_features)`` -> ``(B, out_features)``."""

    def __init__(self, in_features, out_features, hidden=0):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(in_features, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.skip = nn.Linear(in_features, 64)
        self.out = nn.Linear(64, out_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.inner(features) + self.skip(features))
