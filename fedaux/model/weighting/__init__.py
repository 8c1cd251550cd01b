"""Loss weighting strategies, one per file, selected by name in ``model.weighting.name``."""

from __future__ import annotations

from collections.abc import Sequence

from fedaux.model.weighting.base import LossWeighting
from fedaux.model.weighting.dwa import DynamicWeightAverage
from fedaux.model.weighting.equal import EqualWeighting
from fedaux.model.weighting.fixed import FixedWeighting
from fedaux.model.weighting.random import RandomWeighting
from fedaux.model.weighting.uncertainty import UncertaintyWeighting

WEIGHTINGS: dict[str, type[LossWeighting]] = {
    "random": RandomWeighting,
    "equal": EqualWeighting,
    "fixed": FixedWeighting,
    "uncertainty": UncertaintyWeighting,
    "dwa": DynamicWeightAverage,
}


def build_weighting(cfg, tasks: Sequence[str], main_task: str) -> LossWeighting:
    """The strategy named by ``cfg.name`` (the ``model.weighting`` config section)."""
    if cfg.name not in WEIGHTINGS:
        raise ValueError(f"model.weighting.name={cfg.name!r} is not valid; choose one of {sorted(WEIGHTINGS)}")
    return WEIGHTINGS[cfg.name].from_config(cfg, tasks, main_task)


__all__ = ["WEIGHTINGS", "LossWeighting", "build_weighting", *[c.__name__ for c in WEIGHTINGS.values()]]
