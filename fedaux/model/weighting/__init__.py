"""Loss weighting strategies, one per module, selected by name in ``model.weighting.name``.

Every module of this package is imported here, and each registers its strategy in
:data:`WEIGHTINGS` with ``@WEIGHTINGS.register("name")``: a new strategy is one new file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence

from fedaux.model.weighting.base import WEIGHTINGS, GradientWeighting, LossWeighting, SteppedWeighting

# The paper's strategy first, so error messages list it first; then every other module here.
_FIRST = ("random", "equal", "fixed", "uncertainty", "dwa")
for _name in (*_FIRST, *sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _FIRST)):
    importlib.import_module(f"{__name__}.{_name}")


def build_weighting(cfg, tasks: Sequence[str], main_task: str) -> LossWeighting:
    """The strategy named by ``cfg.name`` (the ``model.weighting`` config section)."""
    return WEIGHTINGS.get(cfg.name).from_config(cfg, tasks, main_task)


__all__ = ["WEIGHTINGS", "GradientWeighting", "LossWeighting", "SteppedWeighting", "build_weighting"]
