"""Running the benchmark's experiments: one process per run slot, each finished run cached on disk.

A run is identified by its resolved experiment config (output and logging keys aside): the same
config in two sections (FedAvg on the leaderboard and "main task only" in the ablation) runs once,
and a benchmark killed half-way restarts with only the runs it had not finished.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fedaux.config import load_config

# Keys that do not change what a run computes: left out of its identity.
_NOT_IDENTITY = ("output_dir", "logging", "name", "federated.workers", "federated.fold_in_workers")


@dataclass(frozen=True)
class RunSpec:
    """One experiment of the benchmark: a config file, its overrides, a seed and, with ``folds >= 2``,
    the cross-validation fold that is its test set (``data.folds``, ``data.fold``, set after the
    overrides)."""

    config: str
    overrides: tuple[str, ...]
    seed: int
    folds: int = 0
    fold: int = 0

    def load(self) -> DictConfig:
        split = [f"data.folds={self.folds}", f"data.fold={self.fold}"] if self.folds >= 2 else []
        return load_config(self.config, [*self.overrides, *split, f"seed={self.seed}", "logging.wandb.mode=disabled",
                                         "logging.progress=false", "logging.plots=false"])

    @property
    def unit(self) -> tuple[int | None, int]:
        """``(fold, seed)``: what two methods' runs must share to pair up (fold None without folds)."""
        return (self.fold if self.folds >= 2 else None, self.seed)

    def key(self) -> str:
        """A digest of what the resolved config sets differently from the schema's defaults: equal
        configs share one cached run, and a new config option with a default (a later version of
        fedaux) leaves the keys of existing runs unchanged. Worked out once per spec: loading the
        config is most of a cached benchmark's time."""
        return _spec_key(self)


@functools.cache
def _spec_key(spec: RunSpec) -> str:
    return config_key(spec.load())


def config_key(cfg: DictConfig) -> str:
    """See :meth:`RunSpec.key`."""
    from fedaux.config import ExperimentConfig

    defaults = _flatten(OmegaConf.to_container(OmegaConf.structured(ExperimentConfig), resolve=True))
    resolved = _flatten(OmegaConf.to_container(cfg, resolve=True))
    identity = {k: v for k, v in resolved.items()
                if not k.startswith(_NOT_IDENTITY) and (k not in defaults or defaults[k] != v)}
    return hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaf values (lists are leaves)."""
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flatten(value, f"{prefix}{key}." if isinstance(value, dict) and value else f"{prefix}{key}"))
    return out


class RunCache:
    """Finished runs as ``<folder>/<key>.json``, written atomically (a killed run leaves no file)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, key: str, result: dict[str, Any]) -> None:
        tmp = self.path(key).with_suffix(".tmp")
        tmp.write_text(json.dumps(result, default=float))
        tmp.replace(self.path(key))


def run_quiet(cfg: DictConfig, data=None, energy: bool = True) -> dict[str, Any]:
    """One federated run with only the measuring callbacks; returns its history and summary."""
    from fedaux.callbacks import CommunicationTracker, EnergyTracker, RoundTimer
    from fedaux.train import build_orchestrator

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    energy_cb = EnergyTracker(enabled=energy)
    callbacks: list[Any] = [CommunicationTracker(), RoundTimer(), energy_cb]
    with tempfile.TemporaryDirectory() as run_dir:
        if cfg.data.exclude_classes:
            # Services left out of training: score their held-out flows as unknown (summary's
            # unknown_detection); the statistics file it writes is not kept.
            from fedaux.callbacks import UnknownTraffic

            callbacks.append(UnknownTraffic.from_config(cfg, Path(run_dir)))
        orchestrator = build_orchestrator(cfg, data, callbacks=callbacks)
        summary = orchestrator.run()
    return {"history": orchestrator.history, "summary": summary, "energy_note": energy_cb.reason}


class DataCache:
    """Build each (data config, partition size, seed) once per process and share it across methods."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def get(self, cfg: DictConfig):
        from fedaux.data.samples import build_federated_data

        key = json.dumps([OmegaConf.to_container(cfg.data), cfg.federated.base_stations, cfg.federated.edge_servers,
                          cfg.seed, cfg.model.heads[cfg.model.main_task].target], sort_keys=True)
        if key not in self._cache:
            self._cache = {}  # one data set at a time keeps memory flat
            self._cache[key] = build_federated_data(cfg.data, cfg.federated.base_stations, cfg.federated.edge_servers,
                                                    cfg.seed, main_target=cfg.model.heads[cfg.model.main_task].target)
        return self._cache[key]


_WORKER_DATA: DataCache | None = None


def _init_worker(threads: int) -> None:
    import torch

    global _WORKER_DATA
    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    _WORKER_DATA = DataCache()


def _run_one(spec: RunSpec, key: str, cache_dir: str, energy: bool) -> tuple[str, float]:
    """In a worker process: run ``spec`` and store its result under ``key``."""
    cfg = spec.load()
    # The benchmark runs `jobs` experiments at once, each fitting its base stations in turn with
    # cores // jobs threads: parallel across runs, which needs no per-round synchronisation.
    cfg.federated.workers = 1
    started = time.perf_counter()
    result = run_quiet(cfg, _WORKER_DATA.get(cfg) if _WORKER_DATA else None, energy=energy)
    result["seconds"] = time.perf_counter() - started
    result["spec"] = {"config": spec.config, "overrides": list(spec.overrides), "seed": spec.seed,
                      "fold": spec.unit[0]}
    RunCache(cache_dir).put(key, result)
    return key, result["seconds"]


def execute(specs: list[RunSpec], cache: RunCache, jobs: int, energy: bool, progress=None) -> dict[RunSpec, dict]:
    """Every spec's result, running (``jobs`` at a time) only those not in ``cache``.

    Each worker is a fresh process with ``cores // jobs`` torch threads, so runs do not fight
    over cores; a run's numbers depend only on its config and that thread count.
    """
    keys = {spec: spec.key() for spec in specs}
    todo: dict[str, RunSpec] = {}
    for spec, key in keys.items():
        if cache.get(key) is None and key not in todo:
            todo[key] = spec
    if progress is not None:
        progress(len(keys) - len(todo), len(keys), None)
    if todo:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=_init_worker,
                                 initargs=(threads,)) as pool:
            futures = [pool.submit(_run_one, spec, key, str(cache.folder), energy) for key, spec in todo.items()]
            done = len(keys) - len(todo)
            for future in as_completed(futures):
                key, _ = future.result()  # a failed run stops the benchmark with its traceback
                done += 1
                if progress is not None:
                    progress(done, len(keys), todo[key])
    results: dict[RunSpec, dict] = {}
    for spec, key in keys.items():
        result = cache.get(key)
        if result is None:  # every run above stored its result, or raised
            raise RuntimeError(f"run {key} of {spec} left no result in {cache.folder}")
        results[spec] = result
    return results
