"""Round-level hooks: how callbacks observe the federated loop without copying it.

The order within a round is: ``on_round_start`` -> ``on_client_done`` or ``on_client_dropped``
(per client) ->
``on_aggregated`` -> ``on_evaluated`` -> ``log_round`` (every callback adds its keys to the round
record) -> ``on_round_end`` (writers see the complete record). ``on_run_teardown`` always runs, also
after a crash, so open files and W&B runs are closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from fedaux.federated.orchestrator import FederatedOrchestrator


@dataclass
class ClientUpdate:
    """What one base station sent back after local training."""

    client: int
    edge: int
    state: dict[str, torch.Tensor]
    num_samples: int
    train_metrics: dict[str, float]  # ``train/*`` epoch means of the client's last local epoch
    fit_seconds: float
    nbytes: int = 0  # bytes of ``state`` as sent

    @property
    def train_loss(self) -> float:
        return self.train_metrics.get("train/loss", float("nan"))


@dataclass
class RoundAggregate:
    """The outcome of aggregation, with what crossed each tier."""

    global_state: dict[str, torch.Tensor]
    edge_samples: dict[int, int]
    clients: list[int]
    bytes_down: dict[str, int]  # tier name -> bytes sent towards the clients
    bytes_up: dict[str, int]  # tier name -> bytes sent towards the top level


class RoundCallback:
    """Base class for round hooks; every hook is optional."""

    def on_run_start(self, orchestrator: FederatedOrchestrator) -> None: ...

    def on_round_start(self, orchestrator: FederatedOrchestrator, rnd: int, clients: list[int]) -> None: ...

    def on_client_done(self, orchestrator: FederatedOrchestrator, rnd: int, update: ClientUpdate) -> None: ...

    def on_client_dropped(self, orchestrator: FederatedOrchestrator, rnd: int, client: int, reason: str) -> None:
        """A base station failed (raised, timed out, sent nothing) or its update was rejected."""

    def on_aggregated(self, orchestrator: FederatedOrchestrator, rnd: int, aggregate: RoundAggregate) -> None: ...

    def on_evaluated(self, orchestrator: FederatedOrchestrator, rnd: int, metrics: dict[str, float]) -> None: ...

    def log_round(self, orchestrator: FederatedOrchestrator, rnd: int, record: dict[str, Any]) -> None:
        """Add this callback's keys for the round to ``record``."""

    def on_round_end(self, orchestrator: FederatedOrchestrator, rnd: int, record: dict[str, Any]) -> None: ...

    def on_run_end(self, orchestrator: FederatedOrchestrator, summary: dict[str, Any]) -> None: ...

    def on_run_teardown(self, orchestrator: FederatedOrchestrator, failed: bool) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class KeepsTotals:
    """For callbacks whose only resumable state is a ``_totals`` dict (bytes, seconds, ...):
    ``state_dict`` / ``load_state_dict`` so a resumed run keeps counting from where it stopped."""

    _totals: dict[str, Any]

    def state_dict(self) -> dict[str, Any]:
        return {"totals": dict(self._totals)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._totals = dict(state["totals"])
