"""``top.server_update``: the strategy turns the average of the edge servers into the next global
model (replacement for FedAvg, a server optimiser step for FedAvgM and FedAdam, control variates
for SCAFFOLD)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from fedaux.federated.pipeline.base import STAGES, StageContext, Update, UpdateStage


@STAGES.register("server_update")
class ServerUpdate(UpdateStage):
    """``strategy.server_update(global, average, participants, clients)``."""

    slot = "top.server_update"

    def __init__(self, strategy: Any) -> None:
        self.strategy = strategy

    @classmethod
    def from_config(cls, cfg: Any, model: torch.nn.Module, strategy: Any) -> ServerUpdate:
        return cls(strategy)

    def __call__(self, update: Update, context: StageContext) -> Update:
        new = self.strategy.server_update(update.reference, update.state, context.participants, context.clients)
        return replace(update, state=new)
