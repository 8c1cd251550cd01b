"""FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020).

Each base station minimises its loss plus ``mu / 2 * ||w - w_global||^2``. The proximal term's
gradient, ``mu * (w - w_global)``, is added to every parameter's gradient before the optimiser
step (and before Lightning clips), which is the same as adding the term to the loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch

from fedaux.errors import ConfigError
from fedaux.federated.strategies.base import STRATEGIES, ParameterGradientHook, Strategy


class ProximalTerm(ParameterGradientHook):
    """Gradient of ``mu / 2 * ||w - anchor||^2`` for every parameter named in ``anchor``."""

    def __init__(self, anchor: Mapping[str, torch.Tensor], mu: float) -> None:
        super().__init__()
        self.anchor, self.mu = anchor, mu

    def correction(self, name: str, param: torch.Tensor) -> torch.Tensor | None:
        if name not in self.anchor:
            return None
        return self.mu * (param.detach() - self.anchor[name].to(param.device))


@STRATEGIES.register("fedprox")
class FedProx(Strategy):
    """FedAvg with a proximal term of weight ``federated.proximal_mu`` in every client's loss."""

    def __init__(self, param_names: Sequence[str], fed_cfg: Any = None, mu: float | None = None) -> None:
        super().__init__(param_names, fed_cfg)
        self.mu = float(mu if mu is not None else fed_cfg.proximal_mu)
        if self.mu < 0:
            raise ConfigError(f"federated.proximal_mu={self.mu} must be >= 0")

    def client_callbacks(self, model, payload, local_state) -> list[L.Callback]:
        trainable = set(self.param_names)
        return [ProximalTerm({k: v for k, v in payload.items() if k in trainable}, self.mu)]
