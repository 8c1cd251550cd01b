"""The scale section: seconds per round and memory as the number of base stations grows.

Each point runs in a fresh process (``python -m fedaux.bench --scale-point N``) so peak memory
belongs to that point alone.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fedaux.callbacks import RoundTimer
from fedaux.config import load_config
from fedaux.data.samples import build_federated_data
from fedaux.data.sources import load_flows
from fedaux.federated.aggregation import state_nbytes
from fedaux.federated.engines import ENGINES
from fedaux.federated.hooks import RoundCallback
from fedaux.train import build_orchestrator


def run_scale(config: Path, points: list[int], rounds: int, replicate: int, overrides: list[str],
              engines: list[str] | None = None, flower_max: int | None = None) -> list[dict]:
    """Every scale point, each in its own process, on the embedded flows repeated ``replicate``
    times: for each number of base stations, one point per engine (``federated.engine``), Flower's
    only up to ``flower_max`` base stations."""
    store = replicated_store(replicate, Path(f"outputs/bench/replicated_store_x{replicate}.npz"))
    out = []
    for n in points:
        for engine in engines or ["inprocess"]:
            if engine == "flower" and flower_max is not None and n > flower_max:
                continue
            proc = subprocess.run(
                [sys.executable, "-m", "fedaux.bench", "--scale-point", str(n), "--config", str(config),
                 "--store", str(store), "--rounds", str(rounds), *overrides, f"federated.engine={engine}"],
                capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"scale point {n} ({engine}) failed:\n{proc.stderr[-2000:]}")
            out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def scale_point(config: Path, base_stations: int, rounds: int, overrides: list[str], store: Path) -> dict:
    """Time per round and peak memory at one number of base stations (run in a fresh process)."""
    cfg = load_config(config, [*overrides, f"federated.base_stations={base_stations}", "federated.edge_servers=2",
                               f"federated.rounds={rounds}", f"data.root={store}", "logging.energy=false"])
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    data = build_federated_data(cfg.data, base_stations, 2, cfg.seed)
    data_mb = (sum(c.x.nbytes for c in data.clients) + data.test.x.nbytes) / 1e6
    rss_after_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    timer, memory = RoundTimer(), RoundMemory()
    engine = ENGINES.get(cfg.federated.engine)(cfg)
    with tempfile.TemporaryDirectory() as run_dir:
        engine.run_dir = Path(run_dir)  # Flower's simulated nodes keep their files there
        orchestrator = build_orchestrator(cfg, data, callbacks=[timer, memory, *engine.callbacks()], engine=engine)
        rss_before_rounds = _current_rss_mb()
        orchestrator.run()
    return {
        "rss_before_rounds_mb": rss_before_rounds,
        "rss_after_each_round_mb": memory.rss,
        "workers": getattr(orchestrator.engine, "workers", 1),
        "fold_in_workers": bool(getattr(orchestrator.engine, "fold_in_workers", False)),
        "worker_rss_after_each_round_mb": memory.worker_rss,
        "rss_after_rounds_mb": _current_rss_mb(),
        "base_stations": base_stations,
        "engine": str(cfg.federated.engine),
        "s_per_round": float(np.mean([r["time/round_s"] for r in orchestrator.history])),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_data_mb": rss_after_data,
        "data_mb": data_mb,
        "state_mb": state_nbytes(orchestrator.global_state) / 1e6,
        "flows": data.flows.num_flows,
    }


class RoundMemory(RoundCallback):
    """Resident memory at the end of every round, of this process and of the worker processes
    together: flat across rounds means nothing accumulates."""

    def __init__(self) -> None:
        self.rss: list[float] = []
        self.worker_rss: list[float] = []

    def on_round_end(self, orchestrator, rnd: int, record: dict[str, Any]) -> None:
        import psutil

        self.rss.append(_current_rss_mb())
        self.worker_rss.append(sum(psutil.Process(pid).memory_info().rss for pid in getattr(orchestrator.engine, "worker_pids", [])) / 2**20)


def _current_rss_mb() -> float:
    """Resident memory now (not the peak), from /proc; NaN where /proc is missing."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def replicated_store(replicate: int, path: Path) -> Path:
    """The embedded flows, each repeated ``replicate`` times as distinct flows (scale test only)."""
    flows, _ = load_flows(None)
    order = np.tile(np.arange(flows.num_flows), replicate)
    flows.select(order, provenance=f"embedded store, every flow x{replicate} (scale benchmark)").save(path)
    return path
