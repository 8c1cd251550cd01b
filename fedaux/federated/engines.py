"""Engines: what drives the rounds of a built orchestrator (``federated.engine``).

An engine contributes the callbacks it needs (created before a checkpoint is restored, so their
state resumes too) and runs the orchestrator's remaining rounds. ``inprocess`` trains the base
stations one after another in this process; ``flower`` runs them on Flower's simulation engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from fedaux.registry import Registry

if TYPE_CHECKING:
    from fedaux.federated.hooks import RoundCallback
    from fedaux.federated.orchestrator import FederatedOrchestrator


class Engine:
    """Base class: drives an orchestrator's rounds; returns the run summary."""

    def callbacks(self) -> list[RoundCallback]:
        """Round callbacks this engine needs among the orchestrator's (e.g. its own byte counter)."""
        return []

    def run(self, orchestrator: FederatedOrchestrator) -> dict[str, Any]:
        raise NotImplementedError


# An entry is called with the experiment config and returns a fresh engine.
ENGINES: Registry[Callable[[DictConfig], Engine]] = Registry("engine", "federated.engine")


@ENGINES.register("inprocess")
class InProcessEngine(Engine):
    """Every selected base station trains in this process, one after another."""

    def __init__(self, cfg: DictConfig | None = None) -> None:
        self.cfg = cfg

    def run(self, orchestrator: FederatedOrchestrator) -> dict[str, Any]:
        return orchestrator.run()


@ENGINES.register("flower")
def flower_simulation(cfg: DictConfig) -> Engine:
    """Flower's simulation engine (imported only when chosen: Flower and Ray load slowly)."""
    from fedaux.federated.flower_engine import FlowerEngine

    return FlowerEngine(cfg)
