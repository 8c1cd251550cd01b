"""Base stations' local fits in parallel worker processes, for the in-process engine.

Each worker is a process with its own copy of the model, the clients' data and the fit settings
(sent once, when it starts) and few torch threads (one by default), so ``workers`` fits run at
once on ``workers`` cores. Per round a worker receives the payload once; per fit only the base
station's index, seed and local state go out and its :class:`~fedaux.federated.client.ClientFit`
comes back. The fit itself is :func:`~fedaux.federated.client.train_client`, the same Lightning
code the sequential loop and Flower's ClientApp run.

Results are handed back in the order the base stations were given (the orchestrator folds them
in base-station order), so a run's weights do not depend on which worker finished first: with
the same torch threads per fit they equal the sequential loop's bit for bit.

Why not ``concurrent.futures.ProcessPoolExecutor``: one worker that dies breaks its whole pool,
and a hung task cannot be cancelled. Here a worker that dies or does not answer within
``federated.client_timeout_s`` costs one dropped base station, with the reason, and is replaced.
The pipes are ``multiprocessing`` connections between processes of one machine; across machines
fedaux runs on Flower.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import lightning as L
import torch

from fedaux.data.samples import SampleSet
from fedaux.federated.client import ClientFit, TrainerOptions, train_client
from fedaux.federated.compression import UplinkCompression
from fedaux.federated.privacy import ClientLevelDP
from fedaux.federated.strategies import Strategy
from fedaux.model.module import MultiTaskModule

log = logging.getLogger(__name__)

# forkserver: workers fork from a server process that has already imported torch and Lightning
# (seconds saved per worker), without forking this process's threads (W&B, torch's pools).
START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
_PRELOAD = ["fedaux.federated.workers"]


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity; ``os.cpu_count()`` where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass
class FitSettings:
    """Everything a base station's fit needs besides its payload, seed and local state: the
    sequential loop calls :meth:`fit` in the main process, and each worker gets one copy when it
    starts."""

    model: MultiTaskModule
    clients: Sequence[SampleSet]
    local_epochs: int
    batch_size: int
    gradient_clip_val: float | None
    callbacks: Sequence[L.Callback]  # copies: their state stays in the worker
    trainer_options: TrainerOptions
    strategy: Strategy
    initial_state: dict[str, torch.Tensor]
    test: SampleSet | None
    compression: UplinkCompression | None
    privacy: ClientLevelDP | None
    dp_sgd: tuple[float, float, float] | None
    threads: int

    def fit(self, client: int, payload: dict[str, torch.Tensor], seed: int,
            local_state: dict[str, torch.Tensor] | None) -> ClientFit:
        return train_client(
            self.model, self.clients[client], payload, local_epochs=self.local_epochs, batch_size=self.batch_size,
            seed=seed, gradient_clip_val=self.gradient_clip_val, callbacks=self.callbacks,
            trainer_options=self.trainer_options, strategy=self.strategy, local_state=local_state,
            initial_state=self.initial_state, test=self.test, compression=self.compression, privacy=self.privacy,
            dp_sgd=self.dp_sgd, client=client,
        )


def _dumps(message: Any) -> bytes:
    # Plain pickle: tensors travel as bytes. multiprocessing's own pickler would move them through
    # shared-memory file descriptors, one per tensor per message, which runs out of descriptors.
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def _worker_main(conn: Connection) -> None:
    """A worker's loop: ``("settings", FitSettings)``, ``("payload", state)``, ``("fit", client,
    seed, local_state)`` -> ``("done", client, ClientFit)`` or ``("failed", client, reason)``."""
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    settings: FitSettings | None = None
    payload: dict[str, torch.Tensor] = {}
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except EOFError:  # the orchestrator went away
            return
        kind = message[0]
        if kind == "settings":
            settings = message[1]
            torch.set_num_threads(settings.threads)
        elif kind == "payload":
            payload = message[1]
        elif kind == "fit":
            _, client, seed, local_state = message
            try:
                reply = ("done", client, settings.fit(client, payload, seed, local_state))
            except Exception as err:  # reported as this base station's failure; the worker goes on
                reply = ("failed", client, f"raised {type(err).__name__}: {err}")
            conn.send_bytes(_dumps(reply))
        elif kind == "stop":
            return


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, context, settings_message: bytes, name: str) -> None:
        self.conn, child = context.Pipe(duplex=True)
        self.process = context.Process(target=_worker_main, args=(child,), name=name, daemon=True)
        self.process.start()
        child.close()
        self.conn.send_bytes(settings_message)
        self.payload_version = -1  # the round whose payload it holds
        self.client: int | None = None  # the base station it is fitting
        self.started = 0.0

    def stop(self, kill: bool = False) -> None:
        if self.process.is_alive():
            if kill:
                self.process.kill()
            else:
                try:
                    self.conn.send_bytes(_dumps(("stop",)))
                except OSError:
                    pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class ClientWorkers:
    """A pool of ``count`` worker processes running local fits, in base-station order.

    Args:
        settings: the fit settings every worker gets when it starts (and a replacement worker too).
        count: worker processes (at least 1).
        timeout_s: a fit with no answer after this long is abandoned, its worker killed and replaced.
    """

    def __init__(self, settings: FitSettings, count: int, timeout_s: float | None = None) -> None:
        if count < 1:
            raise ValueError(f"federated.workers={count}: give at least 1")
        self.count, self.timeout_s = count, timeout_s
        self._context = multiprocessing.get_context(START_METHOD)
        if START_METHOD == "forkserver":
            self._context.set_forkserver_preload(_PRELOAD)
        self._settings = _dumps(("settings", settings))
        self._workers = [self._start(i) for i in range(count)]
        self._round = 0

    def _start(self, index: int) -> _Worker:
        return _Worker(self._context, self._settings, name=f"fedaux-worker-{index}")

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (memory benchmarks read their resident size)."""
        return [w.process.pid for w in self._workers]

    def close(self) -> None:
        """Stop every worker (a pool is single-use after this)."""
        for worker in self._workers:
            worker.stop()
        self._workers = []

    def fit(self, clients: Sequence[int], payload: Mapping[str, torch.Tensor], seeds: Mapping[int, int],
            local_states: Mapping[int, dict[str, torch.Tensor] | None],
            on_dispatch: Callable[[int], None] = lambda client: None) -> Iterator[tuple[int, ClientFit | str]]:
        """Fit ``clients`` from ``payload``; yield ``(client, ClientFit)``, or ``(client, reason)``
        for one that failed, in the order of ``clients``.

        At most ``2 * count`` results wait for an earlier base station's, so memory stays a few
        updates whatever the number of base stations.
        """
        if not self._workers:
            raise RuntimeError("the worker pool is closed")
        self._round += 1
        payload_message = _dumps(("payload", dict(payload)))
        order = list(clients)
        waiting: dict[int, ClientFit | str] = {}
        next_dispatch = next_yield = 0
        window = 2 * self.count
        while next_yield < len(order):
            # Hand out work to idle workers, never running ahead of the fold by more than the window.
            for worker in self._workers:
                if worker.client is None and next_dispatch < min(len(order), next_yield + window):
                    client = order[next_dispatch]
                    next_dispatch += 1
                    on_dispatch(client)
                    self._send(worker, client, payload_message, seeds[client], local_states.get(client))
            if order[next_yield] in waiting:
                client = order[next_yield]
                next_yield += 1
                yield client, waiting.pop(client)
            else:  # the next base station is being fitted (it was dispatched first): wait for answers
                self._collect(waiting)

    def _send(self, worker: _Worker, client: int, payload_message: bytes, seed: int,
              local_state: dict[str, torch.Tensor] | None) -> None:
        worker.client, worker.started = client, time.monotonic()
        try:
            if worker.payload_version != self._round:
                worker.conn.send_bytes(payload_message)
                worker.payload_version = self._round
            worker.conn.send_bytes(_dumps(("fit", client, seed, local_state)))
        except OSError:  # broken pipe: the worker died between fits; _collect reports it
            pass

    def _collect(self, waiting: dict[int, ClientFit | str]) -> None:
        """Wait for the next answer (or the nearest timeout) and file what arrived."""
        busy = [w for w in self._workers if w.client is not None]
        timeout = None
        if self.timeout_s is not None:
            now = time.monotonic()
            timeout = max(0.0, min(w.started + self.timeout_s - now for w in busy))
        ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout)
        for index, worker in enumerate(self._workers):
            if worker.client is None:
                continue
            if worker.conn in ready:
                try:
                    kind, client, outcome = pickle.loads(worker.conn.recv_bytes())
                except (EOFError, OSError):
                    self._replace(index, waiting, self._death_reason(worker))
                    continue
                waiting[client] = outcome
                worker.client = None
            elif worker.process.sentinel in ready:
                self._replace(index, waiting, self._death_reason(worker))
            elif self.timeout_s is not None and time.monotonic() - worker.started >= self.timeout_s:
                self._replace(index, waiting, f"no answer within federated.client_timeout_s={self.timeout_s:g} s "
                                              f"(its worker process was stopped and replaced)")

    @staticmethod
    def _death_reason(worker: _Worker) -> str:
        worker.process.join(timeout=1)
        return f"its worker process died (exit code {worker.process.exitcode}) during the local fit"

    def _replace(self, index: int, waiting: dict[int, ClientFit | str], reason: str) -> None:
        worker = self._workers[index]
        waiting[worker.client] = reason
        worker.stop(kill=True)
        log.warning("worker %s replaced: %s", worker.process.name, reason)
        self._workers[index] = self._start(index)
