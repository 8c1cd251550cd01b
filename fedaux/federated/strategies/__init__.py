"""Federated strategies, one per module, selected by name in ``federated.strategy``.

Every module of this package is imported here and registers its strategy in
:data:`STRATEGIES` with ``@STRATEGIES.register("name")``: a new strategy is one new file.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import torch

from fedaux.errors import ConfigError
from fedaux.federated.strategies.base import STRATEGIES, State, Strategy, batchnorm_statistics

_FIRST = ("fedavg", "fedprox", "scaffold", "fedavgm", "fedadam", "fedper", "fedrep")
_HELPERS = ("base", "server_optimizer")
for _name in (*_FIRST, *sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in (*_FIRST, *_HELPERS))):
    importlib.import_module(f"{__name__}.{_name}")


BATCHNORM_MODES = ("federated", "local")  # federated.batchnorm


def build_strategy(fed_cfg: Any, model: torch.nn.Module) -> Strategy:
    """The strategy named by ``fed_cfg.strategy`` for ``model``'s parameters; with
    ``federated.batchnorm=local`` its base stations keep the BatchNorm statistics.

    Raises:
        ConfigError: ``federated.batchnorm=local`` for a model without BatchNorm statistics.
    """
    name = "fedavg" if fed_cfg is None else fed_cfg.strategy
    strategy = STRATEGIES.get(name).from_config(fed_cfg, [n for n, _ in model.named_parameters()])
    if fed_cfg is not None and fed_cfg.get("batchnorm", "federated") == "local":
        keys = batchnorm_statistics(model)
        if not keys:
            raise ConfigError("federated.batchnorm=local keeps BatchNorm statistics on the base stations, but this model "
                              "has none (model.trunk.norm is not batch); use federated.batchnorm=federated")
        strategy.local_keys = frozenset(keys)
    return strategy


__all__ = ["BATCHNORM_MODES", "STRATEGIES", "State", "Strategy", "batchnorm_statistics", "build_strategy"]
