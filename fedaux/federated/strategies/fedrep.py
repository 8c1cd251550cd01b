"""FedRep (Collins et al., "Exploiting Shared Representations for Personalized Federated
Learning", ICML 2021): like FedPer the heads stay local, but each local fit first trains the heads
alone for ``federated.head_epochs`` epochs (trunk frozen, its BatchNorm statistics too), then the
trunk alone for ``federated.local_epochs`` epochs (heads frozen). Only the trunk is sent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from fedaux.errors import ConfigError
from fedaux.federated.strategies.base import STRATEGIES
from fedaux.federated.strategies.fedper import FedPer, is_local


def _trunk(pl_module: L.LightningModule) -> torch.nn.Module:
    trunk = pl_module.trunk
    if not isinstance(trunk, torch.nn.Module):
        raise TypeError(f"FedRep needs a module with a trunk submodule; {type(pl_module).__name__}.trunk is "
                        f"{type(trunk).__name__}")
    return trunk


class AlternateHeadsAndTrunk(L.Callback):
    """Epochs ``< head_epochs`` train the heads only; later epochs the trunk only."""

    direct_fit_safe = True  # reads trainer.current_epoch only (fedaux.federated.fit_loop)

    def __init__(self, head_epochs: int) -> None:
        self.head_epochs = head_epochs

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        heads_phase = trainer.current_epoch < self.head_epochs
        for name, param in pl_module.named_parameters():
            param.requires_grad_(is_local(name) == heads_phase)
        # A frozen trunk must not move its BatchNorm statistics either.
        _trunk(pl_module).train(not heads_phase)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for param in pl_module.parameters():
            param.requires_grad_(True)
        _trunk(pl_module).train()


@STRATEGIES.register("fedrep")
class FedRep(FedPer):
    """Heads first, then the trunk; heads personal."""

    def __init__(self, param_names: Sequence[str], fed_cfg: Any = None) -> None:
        super().__init__(param_names, fed_cfg)
        self.head_epochs = int(fed_cfg.head_epochs) if fed_cfg is not None else 1
        if self.head_epochs < 1:
            raise ConfigError(f"federated.head_epochs={self.head_epochs} must be >= 1")

    def local_epochs(self, configured: int) -> int:
        return self.head_epochs + configured

    def client_callbacks(self, model, payload, local_state) -> list[L.Callback]:
        return [AlternateHeadsAndTrunk(self.head_epochs)]
