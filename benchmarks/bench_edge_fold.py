"""Benchmark: the worker processes folding their edge servers' updates themselves
(``federated.fold_in_workers``) against sending every update to the main process, as the same
windows are spread over more base stations.

Usage: python benchmarks/bench_edge_fold.py [--base-stations 10 100 1000] [--rounds 3] [--replicate 100] [key=value ...]

Every point is the scale board's windows (conf/quic.yaml's embedded UC Davis flows each repeated
``--replicate`` times as distinct flows, 2 windows per flow) over N base stations under 2 edge
servers, fitted by 2 worker processes of one torch thread each. Both modes share the point's data
and start their workers before round 1. Round 1 is a warm-up; the figures are means over the later
rounds: wall seconds per round, and the main process's own CPU seconds per round (receiving,
validating and folding updates is where the two modes differ). The last line checks that both
modes end with equal weights (``torch.equal``, every tensor, every point).
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path

import torch

from fedaux.bench import machine
from fedaux.bench.scale import replicated_store
from fedaux.config import load_config
from fedaux.data.samples import build_federated_data
from fedaux.federated.engines.workers import WorkerPoolEngine
from fedaux.train import build_orchestrator


def measure(cfg, data, fold: bool, rounds: int) -> tuple[float, float, dict[str, torch.Tensor]]:
    """Mean wall and main-process CPU seconds over rounds 2..rounds, and the final global state."""
    engine = WorkerPoolEngine(2, 1, None, cfg, fold_in_workers=fold)
    server = build_orchestrator(cfg, data=data, engine=engine)
    engine.start(server)
    walls, cpus = [], []
    try:
        for rnd in range(1, rounds + 1):
            wall, cpu = time.perf_counter(), time.process_time()
            engine.run_round(server, rnd)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    finally:
        engine.close()
    later = max(1, rounds - 1)
    return sum(walls[1:]) / later, sum(cpus[1:]) / later, server.global_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-stations", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--replicate", type=int, default=100)
    args, overrides = parser.parse_known_args()
    store = replicated_store(args.replicate, Path(f"outputs/bench/replicated_store_x{args.replicate}.npz"))
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)  # the evaluation in this process: one thread, as each worker
    equal = True
    print("| base stations | updates to main: s/round | main CPU s/round | folded in workers: s/round | "
          "main CPU s/round | folded vs updates |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in sorted(args.base_stations):
        cfg = load_config("conf/quic.yaml", ["data.subflows_per_flow=2", *overrides, f"federated.base_stations={n}",
                                             "federated.edge_servers=2", f"data.root={store}",
                                             f"federated.rounds={args.rounds}", "logging.energy=false",
                                             "logging.progress=false"])
        data = build_federated_data(cfg.data, n, 2, cfg.seed, main_target=cfg.model.heads[cfg.model.main_task].target)
        plain_wall, plain_cpu, plain_state = measure(cfg, data, False, args.rounds)
        fold_wall, fold_cpu, fold_state = measure(cfg, data, True, args.rounds)
        equal = equal and all(torch.equal(plain_state[k], fold_state[k]) for k in plain_state)
        print(f"| {n:,} | {plain_wall:.2f} | {plain_cpu:.2f} | {fold_wall:.2f} | {fold_cpu:.2f} | "
              f"{fold_wall / plain_wall:.2f}x |", flush=True)
    print(f"final global weights equal at every point (torch.equal): {equal}")
    print(f"machine: {machine()}, 2 worker processes of 1 torch thread")


if __name__ == "__main__":
    main()
