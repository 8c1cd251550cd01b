"""The worker-process engine: base stations' local fits in parallel worker processes.

Each worker is a process with its own copy of the :class:`~fedaux.federated.runtime.ClientRuntime`
and the clients' data (sent once, when it starts) and few torch threads (one by default), so
``workers`` fits run at once on ``workers`` cores. Per round a worker receives the payload once;
per fit only the base station's index, the round and its local state go out, and its
:class:`~fedaux.federated.runtime.ClientFit` comes back. The fit is the same
:meth:`~fedaux.federated.runtime.ClientRuntime.fit` the sequential engine and Flower's nodes run.

Results are handed back in the order the base stations were given (the server folds them in
base-station order), so a run's weights do not depend on which worker finished first: with the
same torch threads per fit they equal the sequential engine's bit for bit.

Everything a worker gets is pickled. :func:`check_picklable` tries each plug-in of the runtime
before the first round, so one that cannot cross a process boundary is named with its config
key in one line, instead of failing inside a worker.

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
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

import torch

from fedaux.data.samples import SampleSet
from fedaux.errors import ConfigError
from fedaux.federated.aggregation import EdgeOfClient
from fedaux.federated.edge_fold import EdgeBatch, EdgeSum, fit_and_fold
from fedaux.federated.engines.base import LocalEngine, timeout_reason
from fedaux.federated.pipeline import LocalState
from fedaux.federated.runtime import ClientFit, ClientRuntime, to_update
from fedaux.federated.selection import clients_per_round
from fedaux.plugins import import_plugins

if TYPE_CHECKING:
    from fedaux.federated.hooks import ClientUpdate
    from fedaux.federated.orchestrator import FederatedOrchestrator

log = logging.getLogger(__name__)

# forkserver: workers fork from a server process that has already imported torch and Lightning
# (seconds saved per worker), without forking this process's threads (W&B, torch's pools).
START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
_PRELOAD = ["fedaux.federated.engines.workers"]



def start_fork_server() -> None:
    """Start the fork server now: it imports torch and Lightning (seconds) in its own process
    while this one goes on (reading the data, building the model), so the workers fork from a
    ready server when the first round starts instead of waiting for those imports."""
    if START_METHOD == "forkserver":
        from multiprocessing import forkserver

        multiprocessing.get_context("forkserver").set_forkserver_preload(_PRELOAD)
        forkserver.ensure_running()


@dataclass
class WorkerSetup:
    """What every worker gets once, when it starts: the runtime, the clients' data, its threads."""

    runtime: ClientRuntime
    clients: Sequence[SampleSet]
    threads: int
    edge_of_client: EdgeOfClient | None = None  # needed to fold edge servers here (fold_in_workers)

    def fit(self, client: int, payload: Mapping[str, torch.Tensor], rnd: int,
            local_state: LocalState | None) -> ClientFit:
        return self.runtime.fit(client, self.clients[client], payload, rnd, local_state)

    def fold(self, batch: EdgeBatch, payload: Mapping[str, torch.Tensor]) -> EdgeSum:
        if self.edge_of_client is None:
            raise RuntimeError("the worker was started without the partition's edge servers")
        return fit_and_fold(self.runtime, self.clients, payload, batch, self.edge_of_client)


def _dumps(message: Any) -> bytes:
    # Plain pickle: tensors travel as bytes. multiprocessing's own pickler would move them through
    # shared-memory file descriptors, one per tensor per message, which runs out of descriptors.
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def _worker_main(conn: Connection) -> None:
    """A worker's loop: ``("prepare", sys_path, plugins)``, ``("settings", WorkerSetup)``,
    ``("payload", state)``, ``("fit", client, rnd, local_state)`` -> ``("done", client, ClientFit)``
    or ``("failed", client, reason)``; ``("fold", EdgeBatch)`` -> ``("done", edge, EdgeSum)`` or
    ``("failed", edge, reason)``. ``prepare`` comes first and puts the parent's import path
    and plug-in modules in place, so the settings' plug-in objects unpickle here too."""
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    settings: WorkerSetup | None = None
    payload: dict[str, torch.Tensor] = {}
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except EOFError:  # the orchestrator went away
            return
        except Exception as err:  # e.g. a plug-in module missing here: say so in this process's log and stop
            log.error("worker %d could not read its message: %s: %s", os.getpid(), type(err).__name__, err)
            return
        kind = message[0]
        if kind == "prepare":
            _, sys_path, plugins = message
            sys.path[:] = [*sys_path, *(p for p in sys.path if p not in sys_path)]
            import_plugins(plugins)
        elif kind == "settings":
            settings = message[1]
            torch.set_num_threads(settings.threads)
        elif kind == "payload":
            payload = message[1]
        elif kind == "fit":
            _, client, rnd, local_state = message
            reply: tuple[str, int, ClientFit | str]
            try:
                if settings is None:
                    raise RuntimeError("a fit arrived before the worker's settings")
                reply = ("done", client, settings.fit(client, payload, rnd, local_state))
            except Exception as err:  # reported as this base station's failure; the worker goes on
                reply = ("failed", client, f"raised {type(err).__name__}: {err}")
            conn.send_bytes(_dumps(reply))
        elif kind == "fold":
            batch: EdgeBatch = message[1]
            folded: tuple[str, int, EdgeSum | str]
            try:
                if settings is None:
                    raise RuntimeError("a batch arrived before the worker's settings")
                folded = ("done", batch.edge, settings.fold(batch, payload))
            except Exception as err:  # reported as the whole batch's failure; the worker goes on
                folded = ("failed", batch.edge, f"raised {type(err).__name__}: {err}")
            conn.send_bytes(_dumps(folded))
        elif kind == "stop":
            return


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, context, prepare_message: bytes, settings_message: bytes, name: str) -> None:
        self.conn, child = context.Pipe(duplex=True)
        self.process = context.Process(target=_worker_main, args=(child,), name=name, daemon=True)
        self.process.start()
        child.close()
        self.conn.send_bytes(prepare_message)
        self.conn.send_bytes(settings_message)
        self.payload_version = -1  # the round whose payload it holds
        self.task: int | None = None  # the base station it is fitting (or the edge server it is folding)
        self.timeout_s: float | None = None  # for that task
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
        settings: what every worker gets when it starts (and a replacement worker too), or its
            pickled ``("settings", setup)`` message.
        count: worker processes (at least 1).
        timeout_s: a fit with no answer after this long is abandoned, its worker killed and replaced.
    """

    def __init__(self, settings: WorkerSetup | bytes, count: int, timeout_s: float | None = None,
                 plugins: Sequence[str] = ()) -> None:
        if count < 1:
            raise ValueError(f"federated.workers={count}: give at least 1")
        self.count, self.timeout_s = count, timeout_s
        self._context = multiprocessing.get_context(START_METHOD)
        if START_METHOD == "forkserver":
            self._context.set_forkserver_preload(_PRELOAD)
        self._settings = settings if isinstance(settings, bytes) else _dumps(("settings", settings))
        self._prepare = _dumps(("prepare", list(sys.path), list(plugins)))
        self._workers = [self._start(i) for i in range(count)]
        self._round = 0

    def _start(self, index: int) -> _Worker:
        return _Worker(self._context, self._prepare, self._settings, name=f"fedaux-worker-{index}")

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (memory benchmarks read their resident size)."""
        return [w.process.pid for w in self._workers]

    def close(self) -> None:
        """Stop every worker (a pool is single-use after this)."""
        for worker in self._workers:
            worker.stop()
        self._workers = []

    def fit(self, clients: Sequence[int], payload: Mapping[str, torch.Tensor], rnd: int,
            local_states: Mapping[int, LocalState | None],
            on_dispatch: Callable[[int], None] = lambda client: None) -> Iterator[tuple[int, ClientFit | str]]:
        """Fit ``clients`` from ``payload``; yield ``(client, ClientFit)``, or ``(client, reason)``
        for one that failed, in the order of ``clients``.

        At most ``2 * count`` results wait for an earlier base station's, so memory stays a few
        updates whatever the number of base stations.
        """
        payload_message = self._new_round(payload)
        order = list(clients)
        waiting: dict[int, ClientFit | str] = {}
        next_dispatch = next_yield = 0
        window = 2 * self.count
        while next_yield < len(order):
            # Hand out work to idle workers, never running ahead of the fold by more than the window.
            for worker in self._workers:
                if worker.task is None and next_dispatch < min(len(order), next_yield + window):
                    client = order[next_dispatch]
                    next_dispatch += 1
                    on_dispatch(client)
                    self._send(worker, client, payload_message, ("fit", client, rnd, local_states.get(client)),
                               self.timeout_s)
            if order[next_yield] in waiting:
                client = order[next_yield]
                next_yield += 1
                yield client, waiting.pop(client)
            else:  # the next base station is being fitted (it was dispatched first): wait for answers
                self._collect(waiting)

    def fold_edges(self, batches: Sequence[EdgeBatch], payload: Mapping[str, torch.Tensor],
                   on_dispatch: Callable[[EdgeBatch], None] = lambda batch: None) -> dict[int, EdgeSum | str]:
        """Fit and fold each edge server's batch in one worker (:mod:`fedaux.federated.edge_fold`);
        ``{edge: EdgeSum}``, or ``{edge: reason}`` for a batch whose worker failed, died or ran past
        ``timeout_s`` per base station of the batch. Idle workers take the next batch, largest
        first; which worker folds which edge does not change its sums."""
        payload_message = self._new_round(payload)
        queue = sorted(batches, key=lambda b: -len(b.clients))  # the longest first: the round ends sooner
        done: dict[int, EdgeSum | str] = {}
        while len(done) < len(batches):
            for worker in self._workers:
                if worker.task is None and queue:
                    batch = queue.pop(0)
                    on_dispatch(batch)
                    timeout = None if self.timeout_s is None else self.timeout_s * max(1, len(batch.clients))
                    self._send(worker, batch.edge, payload_message, ("fold", batch), timeout)
            self._collect(done)
        return done

    def _new_round(self, payload: Mapping[str, torch.Tensor]) -> bytes:
        if not self._workers:
            raise RuntimeError("the worker pool is closed")
        self._round += 1
        return _dumps(("payload", dict(payload)))

    def _send(self, worker: _Worker, task: int, payload_message: bytes, message: tuple,
              timeout_s: float | None) -> None:
        worker.task, worker.timeout_s, worker.started = task, timeout_s, time.monotonic()
        try:
            if worker.payload_version != self._round:
                worker.conn.send_bytes(payload_message)
                worker.payload_version = self._round
            worker.conn.send_bytes(_dumps(message))
        except OSError:  # broken pipe: the worker died between tasks; _collect reports it
            pass

    def _collect(self, waiting: dict[int, Any]) -> None:
        """Wait for the next answer (or the nearest timeout) and file what arrived by task."""
        busy = [w for w in self._workers if w.task is not None]
        deadlines = [w.started + w.timeout_s for w in busy if w.timeout_s is not None]
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout)
        for index, worker in enumerate(self._workers):
            if worker.task is None:
                continue
            if worker.conn in ready:
                try:
                    kind, task, outcome = pickle.loads(worker.conn.recv_bytes())
                except (EOFError, OSError):
                    self._replace(index, waiting, self._death_reason(worker))
                    continue
                waiting[task] = outcome
                worker.task = None
            elif worker.process.sentinel in ready:
                self._replace(index, waiting, self._death_reason(worker))
            elif worker.timeout_s is not None and time.monotonic() - worker.started >= worker.timeout_s:
                self._replace(index, waiting, timeout_reason(worker.timeout_s, "its worker process was stopped and replaced"))

    @staticmethod
    def _death_reason(worker: _Worker) -> str:
        worker.process.join(timeout=1)
        return f"its worker process died (exit code {worker.process.exitcode}) during the local fit"

    def _replace(self, index: int, waiting: dict[int, Any], reason: str) -> None:
        worker = self._workers[index]
        if worker.task is None:  # _collect replaces only workers that hold a task
            raise RuntimeError(f"worker {worker.process.name} holds no task to report as failed")
        waiting[worker.task] = reason
        worker.stop(kill=True)
        log.warning("worker %s replaced: %s", worker.process.name, reason)
        self._workers[index] = self._start(index)


def _plugins(runtime: ClientRuntime, cfg: Any) -> Iterator[tuple[str, str, Any]]:
    """``(config key, plug-in name, object)`` for everything a worker receives that config can plug in."""
    model = runtime.model
    heads = cfg.model.heads if cfg is not None else {}
    for name, head in model.heads.items():
        spec = heads.get(name) if heads else None
        yield f"model.heads.{name}.cls", str(getattr(spec, "cls", None) or type(head).__qualname__), head
        loss = getattr(model, "_losses", {}).get(name)
        yield f"model.heads.{name}.loss", str(model.tasks[name].loss), loss
    yield "model.trunk.cls", str(cfg.model.trunk.cls or "") if cfg is not None else "", model.trunk
    yield "model.weighting.name", str(cfg.model.weighting.name) if cfg is not None else "", model.weighting
    yield "federated.strategy", str(cfg.federated.strategy) if cfg is not None else "", runtime.strategy
    for stage in runtime.pipeline.stages:
        yield "federated.stages", type(stage).__qualname__, stage
    for i, callback in enumerate(runtime.callbacks):
        yield f"logging.callbacks[{i}]", type(callback).__qualname__, callback
    yield "model", type(model).__qualname__, model


def check_picklable(setup: WorkerSetup, cfg: Any = None) -> bytes:
    """The pickled setup message, or a :class:`~fedaux.errors.ConfigError` naming the plug-in that
    cannot be pickled and its config key (one line; the CLI exits 2), before any worker starts.

    A plug-in crosses into worker processes by pickle: a class or function defined inside another
    function (a closure, a lambda) cannot.
    """
    try:
        return _dumps(("settings", setup))
    except Exception as whole:  # find which plug-in it was
        for key, name, obj in _plugins(setup.runtime, cfg):
            try:
                _dumps(obj)
            except Exception as err:
                what = f"{name!r} " if name else ""
                raise ConfigError(
                    f"{key}: the plug-in {what}({type(obj).__module__}.{type(obj).__qualname__}) cannot be sent to "
                    f"a worker process: {type(err).__name__}: {str(err).splitlines()[0]}; define it at the top level "
                    "of an importable module (not inside a function), or run with federated.workers=1"
                ) from None
        raise ConfigError(f"the fit settings cannot be sent to a worker process: {type(whole).__name__}: "
                          f"{str(whole).splitlines()[0]}; run with federated.workers=1") from None


# Base stations per worker per round from which folding in the workers is the default. On the
# 2-core AMD EPYC VM (benchmarks/bench_edge_fold.py, 2 workers) it cost 1.04x / 1.02x the round at
# 5 / 50 per worker (whole edge servers balance the load worse than single fits) and saved half
# the round at 500 (0.53x: the main process no longer receives and folds 1,000 updates).
FOLD_FROM_PER_WORKER = 100


def fold_pays(clients_per_round: int, workers: int) -> bool:
    """Whether ``federated.fold_in_workers: null`` folds in the workers: from
    :data:`FOLD_FROM_PER_WORKER` base stations per worker per round."""
    return clients_per_round >= FOLD_FROM_PER_WORKER * workers


class WorkerPoolEngine(LocalEngine):
    """Fits in ``workers`` worker processes with ``threads`` torch threads each.

    The processes start before round 1 (after the plug-ins are checked) and stop when the run
    ends. :attr:`worker_pids` names them while they run. With ``fold_in_workers`` each worker
    takes whole edge servers and folds their updates itself (:mod:`fedaux.federated.edge_fold`):
    the same weights, one sum per edge server sent to this process instead of every update.
    """

    def __init__(self, workers: int, threads: int = 1, timeout_s: float | None = None, cfg: Any = None,
                 fold_in_workers: bool | None = False) -> None:
        if workers < 1 or threads < 1:
            raise ValueError(f"workers={workers} and threads={threads} must be at least 1")
        self.workers, self.threads, self.timeout_s, self.cfg = workers, threads, timeout_s, cfg
        self.fold_asked = fold_in_workers  # None: decided by start() (fold_pays)
        self.fold_in_workers = bool(fold_in_workers)
        self._pool: ClientWorkers | None = None
        start_fork_server()  # engines are built before the data: the server's imports overlap its loading

    def start(self, server: FederatedOrchestrator) -> None:
        if self._pool is None:
            blocker = server.edge_fold_blocker()
            if self.fold_asked and blocker is not None:
                raise ConfigError(f"federated.fold_in_workers=true: {blocker}; or set it to false")
            if self.fold_asked is None:
                per_round = clients_per_round(len(server.data.clients), server.settings.fraction)
                self.fold_in_workers = blocker is None and fold_pays(per_round, self.workers)
            setup = WorkerSetup(server.runtime, server.data.clients, self.threads, server.data.partition.edge_of_client)
            message = check_picklable(setup, self.cfg)
            plugins = list(self.cfg.plugins) if self.cfg is not None else []
            self._pool = ClientWorkers(message, self.workers, self.timeout_s, plugins)

    def run_round(self, server: FederatedOrchestrator, rnd: int) -> dict[str, Any]:
        if not self.fold_in_workers:
            return super().run_round(server, rnd)
        self.start(server)
        assert self._pool is not None
        clients = server.start_round(rnd)
        edge_of_client = server.data.partition.edge_of_client
        by_edge: dict[int, list[int]] = {}
        for client in clients:
            by_edge.setdefault(int(edge_of_client[client]), []).append(client)
        batches = [EdgeBatch(edge, members, rnd, server.seed, {c: server.client_states.get(c) for c in members},
                             server.edge_states.get(edge)) for edge, members in sorted(by_edge.items())]

        def started(batch: EdgeBatch) -> None:
            for client in batch.clients:
                server.client_started(rnd, client)

        folded = self._pool.fold_edges(batches, server.payload, on_dispatch=started)
        outcomes: dict[int, ClientUpdate | str] = {}
        for batch in batches:
            edge_sum = folded[batch.edge]
            if isinstance(edge_sum, str):  # the batch's worker failed: every base station of it is dropped
                outcomes.update((c, f"{edge_sum} (edge server {batch.edge}'s batch)") for c in batch.clients)
            else:
                outcomes.update(edge_sum.outcomes)
        for client in clients:  # the hooks in base-station order, as in every engine
            outcome = outcomes[client]
            if isinstance(outcome, str):
                server.drop(rnd, client, outcome)
            else:
                server.receive_folded(rnd, outcome)
        for batch in batches:
            edge_sum = folded[batch.edge]
            if not isinstance(edge_sum, str) and edge_sum.rule is not None:
                server.add_edge_sum(batch.edge, edge_sum.rule, edge_sum.edge_state)
        return server.finish_round(rnd)

    @property
    def worker_pids(self) -> list[int]:
        """The running worker processes' ids (none before :meth:`start` or after :meth:`close`)."""
        return self._pool.pids if self._pool is not None else []

    def fits(self, server: FederatedOrchestrator, rnd: int,
             clients: list[int]) -> Iterator[tuple[int, ClientUpdate | str]]:
        self.start(server)
        assert self._pool is not None
        states = {c: server.client_states.get(c) for c in clients}
        edges = server.data.partition.edge_of_client
        for client, outcome in self._pool.fit(clients, server.payload, rnd, states,
                                              on_dispatch=lambda c: server.client_started(rnd, c)):
            yield client, outcome if isinstance(outcome, str) else to_update(outcome, edges)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
