"""Fixed user-chosen weights per task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedaux.errors import ConfigError
from fedaux.model.weighting.base import WEIGHTINGS, LossWeighting


@WEIGHTINGS.register("fixed")
class FixedWeighting(LossWeighting):
    """Weights from config (``model.weighting.weights``), one per task, all given explicitly."""

    _weights: torch.Tensor  # (T,) buffer, registered in __init__

    def __init__(self, tasks: Sequence[str], main_task: str, weights: Mapping[str, float]) -> None:
        super().__init__(tasks, main_task)
        missing, unknown = set(self.tasks) - set(weights), set(weights) - set(self.tasks)
        if missing or unknown:
            raise ConfigError(
                f"model.weighting.weights must give exactly the tasks {self.tasks}; "
                f"missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        if any(w < 0 for w in weights.values()):
            raise ConfigError(f"model.weighting.weights={dict(weights)} must be non-negative")
        self.register_buffer("_weights", torch.tensor([float(weights[t]) for t in self.tasks]), persistent=False)

    @classmethod
    def from_config(cls, cfg, tasks: Sequence[str], main_task: str) -> FixedWeighting:
        return cls(tasks, main_task, weights=dict(cfg.weights))

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        return self._weights.to(losses)
