"""The shared 1D-CNN trunk (Rezaei & Liu, arXiv 1906.05248, multi-task traffic model)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from fedaux.errors import ConfigError
from fedaux.registry import Registry

# Normalisation after each convolution: channels -> the layers to insert (none, one or more).
# GroupNorm keeps no running statistics, so nothing about a client's data distribution hides in
# buffers that federated averaging would blend.
NormFactory = Callable[[int], list[nn.Module]]
NORMS: Registry[NormFactory] = Registry("normalisation", "model.trunk.norm")
NORMS.register("none")(lambda channels: [])
NORMS.register("batch")(lambda channels: [nn.BatchNorm1d(channels)])
NORMS.register("group")(lambda channels: [nn.GroupNorm(min(8, channels), channels)])


class ConvTrunk(nn.Module):
    """Blocks of ``convs_per_block`` x (Conv1d + ReLU) then MaxPool1d(2), flattened into dense layers.

    With the defaults (32/64/128 channels, 2 convs of kernel 3 per block, dense 256-256), 3 input
    channels and 60-packet windows it has 0.39 M parameters.

    Args:
        in_channels: ``C``, features per packet (one per ``data.features`` entry; 3 by default).
        packets: window length; fixes the flattened size.
        norm: a :data:`NORMS` name (``"none"``, ``"batch"``, ``"group"``), after each convolution.

    Shape:
        input ``(B, C, packets)`` -> output ``(B, dense[-1])``.

    Example:
        >>> trunk = ConvTrunk(packets=60, in_channels=3)
        >>> trunk(torch.zeros(4, 3, 60)).shape
        torch.Size([4, 256])
        >>> sum(p.numel() for p in trunk.parameters())
        391392
    """

    def __init__(
        self,
        packets: int,
        in_channels: int,
        channels: Sequence[int] = (32, 64, 128),
        convs_per_block: int = 2,
        kernel_size: int = 3,
        dense: Sequence[int] = (256, 256),
        dropout: float = 0.0,
        norm: str = "none",
    ) -> None:
        super().__init__()
        make_norm = NORMS.get(norm)
        if kernel_size % 2 == 0:
            raise ConfigError(f"model.trunk.kernel_size={kernel_size} must be odd so 'same' padding keeps the length")
        if not channels or not dense:
            raise ConfigError("model.trunk.channels and model.trunk.dense need at least one entry each")
        layers: list[nn.Module] = []
        width, length = in_channels, packets
        for out in channels:
            for _ in range(convs_per_block):
                layers += [nn.Conv1d(width, out, kernel_size, padding=kernel_size // 2), *make_norm(out), nn.ReLU()]
                width = out
            if length >= 2:  # windows too short to pool keep their length rather than vanish
                layers.append(nn.MaxPool1d(2))
                length //= 2
        layers.append(nn.Flatten())
        width *= length
        for size in dense:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        self.layers = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
