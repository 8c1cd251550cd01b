"""``edge.validate``: an update must fit the payload it started from before it may be aggregated.

Rejects a missing or empty state, wrong keys, shapes or dtypes, NaN or inf, and (with
``federated.update_norm_bound``) an update too far from the payload
(:func:`~fedaux.federated.validation.update_problem`).
"""

from __future__ import annotations

from typing import Any

import torch

from fedaux.federated.pipeline.base import STAGES, StageContext, Update, UpdateRejected, UpdateStage
from fedaux.federated.validation import update_problem


@STAGES.register("validate")
class ValidateUpdate(UpdateStage):
    """Refuse malformed updates and, with a bound, updates whose L2 distance exceeds it."""

    slot = "edge.validate"

    def __init__(self, norm_bound: float | None = None) -> None:
        self.norm_bound = norm_bound

    @classmethod
    def from_config(cls, cfg: Any, model: torch.nn.Module, strategy: Any) -> ValidateUpdate:
        return cls(cfg.federated.update_norm_bound)

    def __call__(self, update: Update, context: StageContext) -> Update:
        problem = update_problem(update.state, update.reference, self.norm_bound)
        if problem is not None:
            raise UpdateRejected(problem)
        return update
