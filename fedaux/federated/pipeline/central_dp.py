"""``edge.clip`` and ``edge.noise``: central differential privacy (``privacy.mode: central``).

Each edge server clips every base station's update to ``privacy.clip_norm`` as it arrives, and
adds Gaussian noise to its average, scaled to the largest base station's share of that average,
before sending it up (:class:`~fedaux.federated.privacy.ClientLevelDP`). The server's accountant
counts the rounds.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from fedaux.federated.pipeline.base import STAGES, StageContext, Update, UpdateStage
from fedaux.federated.privacy import ClientLevelDP


class _CentralDP(UpdateStage):
    def __init__(self, privacy: ClientLevelDP) -> None:
        self.privacy = privacy

    @classmethod
    def from_config(cls, cfg: Any, model: torch.nn.Module, strategy: Any) -> _CentralDP | None:
        privacy = ClientLevelDP.from_config(cfg.privacy)
        return cls(privacy) if privacy is not None and privacy.mode == "central" else None


@STAGES.register("clip_at_edge")
class ClipAtEdge(_CentralDP):
    """Clip each base station's update at its edge server."""

    slot = "edge.clip"

    def __call__(self, update: Update, context: StageContext) -> Update:
        return replace(update, state=self.privacy.clip_at_edge(update.state, update.reference))


@STAGES.register("noise_at_edge")
class NoiseAtEdge(_CentralDP):
    """Noise on each edge server's average."""

    slot = "edge.noise"

    def __call__(self, update: Update, context: StageContext) -> Update:
        return replace(update, state=self.privacy.noise_at_edge(update.state, context.weight_share, update.seed))
