"""The hard-parameter-sharing multi-task model: trunk, heads, loss weighting, LightningModule."""

from fedaux.model.factory import build_model, task_specs
from fedaux.model.module import MultiTaskModule, TaskSpec

__all__ = ["MultiTaskModule", "TaskSpec", "build_model", "task_specs"]
