"""What every engine shares: the interface, the round loop of the engines that fit on this
machine, and the one wording of a timed-out base station.

An engine decides only where and when base stations' fits run. What a fit is
(:class:`~fedaux.federated.runtime.ClientRuntime`) and what the server does with an update
(:class:`~fedaux.federated.orchestrator.FederatedOrchestrator`) are the same for every engine:
each one calls the server's ``start_round`` -> ``client_started`` -> ``receive`` / ``drop`` ->
``finish_round`` in that order, for every round, then ``sum_features`` once (the statistics pass of
:mod:`fedaux.unknown`: every base station's feature sums under the final global model).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedaux.federated.hooks import ClientUpdate, RoundCallback
    from fedaux.federated.orchestrator import FederatedOrchestrator


def timeout_reason(timeout_s: float, detail: str = "") -> str:
    """Why a base station was dropped for not answering in time (every engine words it so)."""
    return f"no answer within federated.client_timeout_s={timeout_s:g} s" + (f" ({detail})" if detail else "")


class Engine:
    """Base class: drives a server's rounds and returns the run summary.

    Attributes:
        run_dir: the run folder (set by :func:`fedaux.train.run`); engines that keep files per
            base station (Flower's simulated nodes) put them under it.
    """

    run_dir: Path | None = None

    def callbacks(self) -> list[RoundCallback]:
        """Round callbacks this engine needs among the server's (e.g. its own byte counter); they
        exist before a checkpoint is restored, so their state resumes too."""
        return []

    def run(self, server: FederatedOrchestrator) -> dict[str, Any]:
        """Every round the server has left; the summary. :meth:`close` runs even if a round raises."""
        try:
            self.start(server)
            return server.run(self.drive)
        finally:
            self.close()

    def start(self, server: FederatedOrchestrator) -> None:
        """Prepare before round 1 (start processes, check what they will be sent)."""

    def drive(self, server: FederatedOrchestrator) -> None:
        """Call the server's round API for each round it has left."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what :meth:`start` took."""


class LocalEngine(Engine):
    """Engines whose fits run on this machine: one round loop, fits from :meth:`fits`."""

    def drive(self, server: FederatedOrchestrator) -> None:
        first = server.completed_rounds + 1
        for rnd in range(first, first + server.rounds_to_run()):
            self.run_round(server, rnd)
        server.sum_features(lambda state: self.feature_sums(server, state))

    def feature_sums(self, server: FederatedOrchestrator, state: dict[str, Any]) -> Iterator[tuple[int, Any]]:
        """The statistics pass: every base station's feature sums with the final global ``state``,
        one after another in this process (the pass is one forward pass over the labelled windows,
        which does not pay for sending the model to the worker processes); a base station that
        raises yields its reason."""
        for client, samples in enumerate(server.data.clients):
            try:
                yield client, server.runtime.feature_sums(samples, state)
            except Exception as err:  # one failing base station must not cost the others' statistics
                yield client, f"raised {type(err).__name__}: {err}"

    def run_round(self, server: FederatedOrchestrator, rnd: int) -> dict[str, Any]:
        """One round: select, fit (a base station that raises, hangs or whose worker dies is
        dropped), aggregate, evaluate; returns the round's record. A caller outside :meth:`run`
        should :meth:`close` the engine afterwards."""
        clients = server.start_round(rnd)
        for client, outcome in self.fits(server, rnd, clients):
            if isinstance(outcome, str):
                server.drop(rnd, client, outcome)
            else:
                server.receive(rnd, outcome)
        return server.finish_round(rnd)

    def fits(self, server: FederatedOrchestrator, rnd: int,
             clients: list[int]) -> Iterator[tuple[int, ClientUpdate | str]]:
        """``(client, update)``, or ``(client, reason)`` for one that failed, in the order of ``clients``;
        calls ``server.client_started`` as each fit is handed out."""
        raise NotImplementedError
