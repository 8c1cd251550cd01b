"""Federated strategies, one per module, selected by name in ``federated.strategy``.

Every module of this package is imported here and registers its strategy in
:data:`STRATEGIES` with ``@STRATEGIES.register("name")``: a new strategy is one new file.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import torch

from fedaux.federated.strategies.base import STRATEGIES, State, Strategy

_FIRST = ("fedavg", "fedprox", "scaffold", "fedavgm", "fedadam", "fedper", "fedrep")
_HELPERS = ("base", "server_optimizer")
for _name in (*_FIRST, *sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in (*_FIRST, *_HELPERS))):
    importlib.import_module(f"{__name__}.{_name}")


def build_strategy(fed_cfg: Any, model: torch.nn.Module) -> Strategy:
    """The strategy named by ``fed_cfg.strategy`` for ``model``'s parameters."""
    name = "fedavg" if fed_cfg is None else fed_cfg.strategy
    return STRATEGIES.get(name).from_config(fed_cfg, [n for n, _ in model.named_parameters()])


__all__ = ["STRATEGIES", "State", "Strategy", "build_strategy"]
