"""``base_station.upload``: what the strategy sends up after a local fit, and what it keeps.

The strategy (:mod:`fedaux.federated.strategies`) decides: the whole model (FedAvg), the trunk
only (FedPer, FedRep: the heads stay as local state), or the model plus control-variate updates
(SCAFFOLD, which keeps its control variates). Its local state lives under the ``strategy``
namespace, which the strategy also reads when the next fit starts.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from fedaux.federated.pipeline.base import STAGES, StageContext, Update, UpdateStage

STRATEGY_STATE = "strategy"  # the namespace of what the strategy keeps on a base station


@STAGES.register("strategy_upload")
class StrategyUpload(UpdateStage):
    """The strategy's upload from the fitted model; its local state under ``strategy``."""

    slot = "base_station.upload"
    state_key = STRATEGY_STATE

    def __init__(self, strategy: Any) -> None:
        self.strategy = strategy

    @classmethod
    def from_config(cls, cfg: Any, model: torch.nn.Module, strategy: Any) -> StrategyUpload:
        return cls(strategy)

    def __call__(self, update: Update, context: StageContext) -> Update:
        if context.model is None:
            raise ValueError("StrategyUpload runs at the base station, after a fit: the context needs the model")
        upload, kept = self.strategy.client_upload(context.model, update.reference, context.previous,
                                                   context.fit_callbacks)
        context.keep.update(kept)
        return replace(update, state=upload)
