"""``base_station.privatise``: local differential privacy (``privacy.mode: local``).

The base station clips its update to ``privacy.clip_norm`` and adds Gaussian noise before it
leaves (:meth:`~fedaux.federated.privacy.ClientLevelDP.at_client`), so compression that follows
only post-processes a private update.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from fedaux.federated.pipeline.base import STAGES, StageContext, Update, UpdateStage
from fedaux.federated.privacy import ClientLevelDP


@STAGES.register("local_dp")
class LocalDP(UpdateStage):
    """Clip and noise each base station's update at the base station."""

    slot = "base_station.privatise"

    def __init__(self, privacy: ClientLevelDP) -> None:
        self.privacy = privacy

    @classmethod
    def from_config(cls, cfg: Any, model: torch.nn.Module, strategy: Any) -> LocalDP | None:
        privacy = ClientLevelDP.from_config(cfg.privacy)
        return cls(privacy) if privacy is not None and privacy.mode == "local" else None

    def __call__(self, update: Update, context: StageContext) -> Update:
        return replace(update, state=self.privacy.at_client(update.state, update.reference, update.seed))
