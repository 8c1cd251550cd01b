"""Random loss weighting, RLW (Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus
Test for Multi-Task Learning", TMLR 2022): the FedAuxHMTL choice."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedaux.errors import ConfigError
from fedaux.model.weighting.base import WEIGHTINGS, LossWeighting


@WEIGHTINGS.register("random")
class RandomWeighting(LossWeighting):
    """Every step, weights = softmax of Gaussian draws.

    The main task keeps weight 1 and the auxiliary weights are ``softmax(N(0, std^2))`` over the
    auxiliary tasks; with ``draw_main`` all tasks are drawn together. Draws use torch's global
    generator, so ``seed_everything`` makes them repeatable. Outside training (``val/loss``) the
    weights are the draws' expectation, ``1/K`` for each of the K drawn tasks by symmetry: a
    validation loss is then a number of the model alone, not of where the generator stood.

    Example:
        >>> w = RandomWeighting(["main", "a", "b"], "main")
        >>> weights = w.weights(torch.ones(3))
        >>> float(weights[0]), round(float(weights[1:].sum()), 6)
        (1.0, 1.0)
    """

    _drawn: torch.Tensor  # (K,) long buffer: the indices of the drawn tasks, registered in __init__

    def __init__(self, tasks: Sequence[str], main_task: str, std: float = 1.0, draw_main: bool = False) -> None:
        super().__init__(tasks, main_task)
        if std <= 0:
            raise ConfigError(f"model.weighting.std={std} must be > 0")
        self.std, self.draw_main = std, draw_main
        drawn = [i for i in range(len(self.tasks)) if draw_main or i != self.main_index]
        self.register_buffer("_drawn", torch.tensor(drawn, dtype=torch.long), persistent=False)

    @classmethod
    def from_config(cls, cfg, tasks: Sequence[str], main_task: str) -> RandomWeighting:
        return cls(tasks, main_task, std=cfg.std, draw_main=cfg.draw_main)

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        weights = torch.ones_like(losses)
        if len(self._drawn) and not self.training:
            weights[self._drawn] = 1.0 / len(self._drawn)
        elif len(self._drawn):
            draws = torch.randn(len(self._drawn), device=losses.device, dtype=losses.dtype) * self.std
            weights[self._drawn] = torch.softmax(draws, dim=0)
        return weights
