"""Engines: where and when base stations' fits run (``federated.engine``).

* ``inprocess``: on this machine; :func:`worker_layout` picks the sequential engine
  (:mod:`~fedaux.federated.engines.sequential`, ``federated.workers=1``) or worker processes
  (:mod:`~fedaux.federated.engines.workers`);
* ``flower``: on Flower, in its simulation or on a deployment's grid
  (:mod:`~fedaux.federated.engines.flower`).

Every engine fits with the same :class:`~fedaux.federated.runtime.ClientRuntime` and drives the
same server API (:mod:`~fedaux.federated.engines.base`). Engine modules are imported when chosen:
Flower and Ray load slowly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from fedaux.errors import ConfigError
from fedaux.federated.engines.base import Engine, LocalEngine, timeout_reason
from fedaux.federated.selection import clients_per_round
from fedaux.registry import Registry

# An entry is called with the experiment config and returns a fresh engine.
ENGINES: Registry[Callable[[Any], Engine]] = Registry("engine", "federated.engine")


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity; ``os.cpu_count()`` where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def worker_layout(fed: Any, num_clients: int) -> dict[str, int]:
    """``{"workers": ..., "worker_threads": ...}`` from ``federated.workers`` (None: the cores).

    No more workers than base stations per round (an idle process only costs memory), and the
    cores shared evenly between them: one torch thread each when there is a worker per core.
    """
    cores = available_cores()
    workers = min(fed.workers if fed.workers is not None else cores, clients_per_round(num_clients, fed.fraction))
    return {"workers": workers, "worker_threads": max(1, cores // workers)}


@ENGINES.register("inprocess")
def in_process(cfg: Any) -> Engine:
    """This machine: one worker process per core by default, or one fit after another (``workers=1``)."""
    fed = cfg.federated
    layout = worker_layout(fed, fed.base_stations)
    workers, threads = layout["workers"], layout["worker_threads"]
    if workers == 1:
        from fedaux.federated.engines.sequential import SequentialEngine

        return SequentialEngine(fed.client_timeout_s)
    from fedaux.federated.engines.workers import WorkerPoolEngine

    return WorkerPoolEngine(workers, threads, fed.client_timeout_s, cfg, fed.get("fold_in_workers"))


@ENGINES.register("flower")
def flower(cfg: Any) -> Engine:
    """Flower's simulation engine on this machine."""
    from fedaux.federated.engines.flower import FlowerEngine

    return FlowerEngine(cfg)


def check_config(cfg: Any) -> None:
    """``federated.workers`` (called by :func:`fedaux.config.validate`)."""
    workers = cfg.federated.workers
    if workers is not None and workers < 1:
        raise ConfigError(f"federated.workers={workers} must be >= 1 (1: fit base stations one after another in the "
                          "main process; null: one worker per core)")


__all__ = ["ENGINES", "Engine", "LocalEngine", "available_cores", "clients_per_round", "timeout_reason",
           "worker_layout"]
