"""Server optimisers at the top tier (Reddi et al., "Adaptive Federated Optimization", ICLR 2021):
the average of the edge servers defines a pseudo-gradient ``x - average``, and a torch optimiser
steps the global parameters along it. Buffers (BatchNorm statistics) take the average as in FedAvg.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fedaux.errors import ConfigError
from fedaux.federated.strategies.base import State, Strategy


class ServerOptimizerStrategy(Strategy):
    """FedAvg at the edge tier, a torch optimiser over the pseudo-gradient at the top."""

    default_server_lr = 1.0  # used when ``federated.server_lr`` is null

    def __init__(self, param_names: Sequence[str], fed_cfg: Any = None) -> None:
        super().__init__(param_names, fed_cfg)
        lr = getattr(fed_cfg, "server_lr", None) if fed_cfg is not None else None
        self.server_lr = float(self.default_server_lr if lr is None else lr)
        if self.server_lr <= 0:
            raise ConfigError(f"federated.server_lr={self.server_lr} must be > 0")
        self.fed_cfg = fed_cfg
        self._params: dict[str, torch.nn.Parameter] = {}
        self._optimizer: torch.optim.Optimizer | None = None
        self._pending_state: dict[str, Any] | None = None

    def make_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        raise NotImplementedError

    def _ensure(self, global_state: Mapping[str, torch.Tensor]) -> torch.optim.Optimizer:
        """The server optimiser, made over the global parameters on first use."""
        if self._optimizer is not None:
            return self._optimizer
        self._params = {k: torch.nn.Parameter(global_state[k].detach().clone().float()) for k in self.param_names}
        self._optimizer = self.make_optimizer(list(self._params.values()))
        if self._pending_state is not None:
            self._optimizer.load_state_dict(self._pending_state)
            self._pending_state = None
        return self._optimizer

    def server_update(self, global_state, aggregate, participants: int, clients: int) -> State:
        optimizer = self._ensure(global_state)
        with torch.no_grad():
            for k, param in self._params.items():
                param.copy_(global_state[k])
                param.grad = (global_state[k] - aggregate[k]).to(param.dtype)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        new = super().server_update(global_state, aggregate, participants, clients)  # buffers: the average
        for k, param in self._params.items():
            new[k] = param.detach().clone().to(global_state[k].dtype)
        return new

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self._optimizer.state_dict()} if self._optimizer is not None else {}

    def load_state_dict(self, state) -> None:
        if "optimizer" in state:
            self._pending_state = state["optimizer"]
            self._optimizer = None  # rebuilt on the next update, from the restored global state
