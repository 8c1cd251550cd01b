"""Gradient-based multi-task aggregators, through torchjd (Jacobian descent; Quinton & Rey,
"Jacobian Descent for Multi-Objective Optimization", 2024; https://github.com/TorchJD/torchjd).

These methods need each task's gradient with respect to the shared trunk, not just the losses:
the module then steps by hand (Lightning's manual optimisation). ``torchjd.autojac.mtl_backward``
computes the ``(T, P)`` Jacobian of the task losses on the trunk's parameters, the method's
aggregator turns it into one gradient, and each head gets its own task's gradient. The weights
returned by the aggregator's weighting are logged as ``train/weight/<task>`` like any strategy's;
for validation loss the tasks count equally.

No method here is written by hand: each class only picks torchjd's aggregator.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torchjd.aggregation as jd
from torchjd.autojac import jac_to_grad, mtl_backward

from fedaux.errors import ConfigError
from fedaux.model.weighting.base import WEIGHTINGS, LossWeighting


class GradientAggregation(LossWeighting):
    """Base class: combines per-task gradients on the shared trunk with a torchjd aggregator.

    Shape:
        ``backward(losses, features, ...)``: T scalar losses, features ``(B, F)`` -> weights ``(T,)``.
    """

    needs_gradients = True

    def __init__(self, tasks: Sequence[str], main_task: str) -> None:
        super().__init__(tasks, main_task)
        self.aggregator = self.make_aggregator()

    def make_aggregator(self) -> jd.Aggregator:
        raise NotImplementedError

    def start_fit(self) -> None:
        # Stateful aggregators (Nash-MTL's last weights and step count) start afresh every fit.
        reset = getattr(self.aggregator, "reset", None)
        if reset is not None:
            reset()

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(losses)  # validation loss only; training steps through backward()

    def backward(self, losses: Sequence[torch.Tensor], features: torch.Tensor, shared_params: Sequence[torch.Tensor],
                 task_params: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
        """Fill ``.grad`` of the trunk (aggregated) and of each head (its own loss); return the ``(T,)`` weights.

        ``losses`` are the T scalar task losses, each its own graph (not slices of one stacked tensor).
        """
        mtl_backward(list(losses), features, shared_params=list(shared_params),
                     tasks_params=[list(p) for p in task_params])
        weights = jac_to_grad(list(shared_params), self.aggregator)
        if weights is None:  # an aggregator that does not weight rows (none of those registered here)
            return torch.full((len(losses),), float("nan"), device=features.device)
        return weights.detach().to(features.device, losses[0].dtype)


@WEIGHTINGS.register("mgda")
class MGDA(GradientAggregation):
    """MGDA (Désidéri 2012; Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
    NeurIPS 2018): the min-norm point of the convex hull of the task gradients."""

    def make_aggregator(self):
        return jd.MGDA()


@WEIGHTINGS.register("pcgrad")
class PCGrad(GradientAggregation):
    """PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020): project each
    task gradient off the others it conflicts with, then sum."""

    def make_aggregator(self):
        return jd.PCGrad()


@WEIGHTINGS.register("cagrad")
class CAGrad(GradientAggregation):
    """CAGrad (Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021):
    the update within ``c`` times the mean gradient's norm that maximises the worst task's gain."""

    def __init__(self, tasks: Sequence[str], main_task: str, c: float = 0.4) -> None:
        if not 0 <= c < 1:
            raise ConfigError(f"model.weighting.c={c} must be in [0, 1) for cagrad")
        self.c = c
        super().__init__(tasks, main_task)

    @classmethod
    def from_config(cls, cfg, tasks, main_task):
        return cls(tasks, main_task, c=cfg.c)

    def make_aggregator(self):
        return jd.CAGrad(c=self.c)


@WEIGHTINGS.register("nash_mtl")
class NashMTL(GradientAggregation):
    """Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022): the Nash
    bargaining solution over task gradients (solved with cvxpy, as torchjd does)."""

    def make_aggregator(self):
        return jd.NashMTL(n_tasks=len(self.tasks))

    def backward(self, losses, features, shared_params, task_params):
        # cvxpy warns on every solve that torchjd's problem is not DPP (so not cached) and about
        # zero rows (a batch with no main labels); the weights are still finite (tested).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"cvxpy\..*")
            warnings.filterwarnings("ignore", module=r"torchjd\..*")
            return super().backward(losses, features, shared_params, task_params)


@WEIGHTINGS.register("upgrad")
class UPGrad(GradientAggregation):
    """UPGrad (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024): project
    each task gradient onto the dual cone of all of them and average, so no task's loss rises to
    first order."""

    def make_aggregator(self):
        return jd.UPGrad()
