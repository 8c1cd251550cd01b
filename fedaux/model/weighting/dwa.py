"""Dynamic weight average, DWA (Liu, Johns & Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedaux.errors import ConfigError
from fedaux.model.weighting.base import WEIGHTINGS, LossWeighting


@WEIGHTINGS.register("dwa")
class DynamicWeightAverage(LossWeighting):
    """``w_i = T * softmax(r_i / temperature)`` with ``r_i = L_i(e-1) / L_i(e-2)``, from epoch means.

    Weights are 1 until two epochs of history exist. The history is each base station's own: kept
    with its local state between its fits (:meth:`local_state`), never exchanged or averaged.
    """

    # Buffers, registered in __init__.
    _epoch_sum: torch.Tensor  # (T,)
    _epoch_steps: torch.Tensor  # ()
    _history: torch.Tensor  # (epochs, T), at most the last two epochs' means

    def __init__(self, tasks: Sequence[str], main_task: str, temperature: float = 2.0) -> None:
        super().__init__(tasks, main_task)
        if temperature <= 0:
            raise ConfigError(f"model.weighting.temperature={temperature} must be > 0")
        self.temperature = temperature
        n = len(self.tasks)
        self.register_buffer("_epoch_sum", torch.zeros(n), persistent=False)
        self.register_buffer("_epoch_steps", torch.zeros(()), persistent=False)
        self.register_buffer("_history", torch.zeros(0, n), persistent=False)  # (epochs, T) means

    @classmethod
    def from_config(cls, cfg, tasks: Sequence[str], main_task: str) -> DynamicWeightAverage:
        return cls(tasks, main_task, temperature=cfg.temperature)

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._epoch_sum += losses.to(self._epoch_sum)
            self._epoch_steps += 1
        if self._history.shape[0] < 2:
            return torch.ones_like(losses)
        ratio = self._history[-1] / self._history[-2].clamp_min(1e-12)
        return (len(self.tasks) * torch.softmax(ratio / self.temperature, dim=0)).to(losses)

    def local_state(self) -> dict[str, torch.Tensor]:
        return {"history": self._history.detach().cpu().clone()}

    def load_local_state(self, state: dict[str, torch.Tensor]) -> None:
        history = state.get("history")
        self._history = (torch.zeros(0, len(self.tasks)) if history is None else history.clone()).to(self._epoch_sum)
        self._epoch_sum.zero_()
        self._epoch_steps.zero_()

    def on_epoch_end(self) -> None:
        if self._epoch_steps > 0:
            mean = (self._epoch_sum / self._epoch_steps).unsqueeze(0)
            self._history = torch.cat([self._history, mean])[-2:]
            self._epoch_sum.zero_()
            self._epoch_steps.zero_()
