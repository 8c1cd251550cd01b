"""The sequential engine: base stations fit one after another in this process (``federated.workers=1``)."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from fedaux.federated.engines.base import LocalEngine, timeout_reason
from fedaux.federated.errors import ClientTimeout
from fedaux.federated.runtime import ClientFit, to_update

if TYPE_CHECKING:
    from fedaux.federated.hooks import ClientUpdate
    from fedaux.federated.orchestrator import FederatedOrchestrator


def _with_timeout(fn: Callable[[], Any], timeout_s: float) -> Any:
    """Run ``fn`` in a daemon thread; raise :class:`~fedaux.federated.errors.ClientTimeout` if it has not returned in time."""
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as err:  # re-raised in the caller's thread
            outcome["error"] = err

    worker = threading.Thread(target=work, daemon=True, name="fedaux-client")
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise ClientTimeout(timeout_reason(timeout_s))
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class SequentialEngine(LocalEngine):
    """Every selected base station fits in this process with this process's torch threads.

    Args:
        timeout_s: ``federated.client_timeout_s``. With a timeout each fit runs in a thread on its
            own copy of the model, so a fit that hangs can be abandoned without touching the model
            the next base station starts from.
    """

    workers = 1  # fits at once

    def __init__(self, timeout_s: float | None = None) -> None:
        self.timeout_s = timeout_s

    def fits(self, server: FederatedOrchestrator, rnd: int,
             clients: list[int]) -> Iterator[tuple[int, ClientUpdate | str]]:
        for client in clients:
            server.client_started(rnd, client)
            try:
                fit = self._fit(server, client, rnd)
            except ClientTimeout as err:
                yield client, str(err)
                continue
            except Exception as err:  # a failing base station must not end the federation
                yield client, f"raised {type(err).__name__}: {err}"
                continue
            yield client, to_update(fit, server.data.partition.edge_of_client)

    def _fit(self, server: FederatedOrchestrator, client: int, rnd: int) -> ClientFit:
        runtime = server.runtime
        if self.timeout_s is not None:
            runtime = copy.copy(runtime)
            runtime.model = copy.deepcopy(runtime.model)
        local_state = server.client_states.get(client)

        def fit() -> ClientFit:
            return runtime.fit(client, server.data.clients[client], server.payload, rnd, local_state)

        return fit() if self.timeout_s is None else _with_timeout(fit, self.timeout_s)
