"""Benchmark: what a base station's fit costs beyond its training steps, with Lightning's Trainer
and with fedaux's direct fit loop (``federated.fit_loop``), as the same windows are spread over
more base stations.

Usage: python benchmarks/bench_fit_loop.py [--base-stations 10 100 1000] [--rounds 3] [--replicate 9] [key=value ...]

Every point is the same windows, conf/quic.yaml's embedded UC Davis flows each repeated
``--replicate`` times as distinct flows (the scale board's store: 1,000 base stations need at
least 1,000 training flows), over N base stations under 2 edge servers, fitted one after another in this process with one torch thread
(``federated.workers=1``), so the training steps are the same at every N and what grows with N
is the per-fit cost. Round 1 is a warm-up; the figure is the mean of the later rounds'
``time/round_s`` (training, aggregation and evaluation). The last lines give each loop's
per-fit cost, ``(s/round at N - s/round at the smallest N) / (N - smallest N)``, the direct loop
against the Trainer in the same run, and check that both loops end round 1 with equal weights.
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
from fedaux.federated.engines.sequential import SequentialEngine
from fedaux.train import build_orchestrator


def seconds_per_round(base_stations: int, fit_loop: str, rounds: int, overrides: list[str]) -> tuple[float, dict]:
    """Mean s/round over rounds 2..rounds, and the global state after round 1."""
    cfg = load_config("conf/quic.yaml", [*overrides, f"federated.base_stations={base_stations}",
                                         f"data.root={STORE}",
                                         "federated.edge_servers=2", "federated.workers=1",
                                         f"federated.fit_loop={fit_loop}", f"federated.rounds={rounds}",
                                         "logging.energy=false", "logging.progress=false"])
    engine = SequentialEngine()
    server = build_orchestrator(cfg, engine=engine)
    times, first = [], None
    for rnd in range(1, rounds + 1):
        started = time.perf_counter()
        engine.run_round(server, rnd)
        times.append(time.perf_counter() - started)
        if rnd == 1:
            first = {k: v.clone() for k, v in server.global_state.items()}
    assert first is not None
    return sum(times[1:]) / len(times[1:]), first


STORE = Path("outputs/bench/replicated_store.npz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-stations", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--replicate", type=int, default=9)
    args, overrides = parser.parse_known_args()
    replicated_store(args.replicate, STORE)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    points = sorted(args.base_stations)
    table: dict[str, dict[int, float]] = {"trainer": {}, "auto": {}}
    states: dict[str, dict] = {}
    print("| base stations | Trainer s/round | direct s/round | direct vs Trainer |")
    print("|---:|---:|---:|---:|")
    for n in points:
        for loop in table:
            table[loop][n], state = seconds_per_round(n, loop, args.rounds, overrides)
            if n == points[0]:
                states[loop] = state
        print(f"| {n:,} | {table['trainer'][n]:.3f} | {table['auto'][n]:.3f} | "
              f"{table['auto'][n] / table['trainer'][n]:.2f}x |", flush=True)
    base = points[0]
    for n in points[1:]:
        per_fit = {loop: (t[n] - t[base]) / (n - base) * 1e3 for loop, t in table.items()}
        print(f"{base} -> {n:,} base stations: per extra fit {per_fit['trainer']:.1f} ms with the Trainer, "
              f"{per_fit['auto']:.1f} ms direct; s/round {table['trainer'][n] / table['trainer'][base]:.2f}x "
              f"(Trainer) and {table['auto'][n] / table['auto'][base]:.2f}x (direct) the {base}-base-station round")
    equal = all(torch.equal(states["trainer"][k], states["auto"][k]) for k in states["trainer"])
    print(f"round-1 global weights equal (torch.equal, {base} base stations): {equal}")
    print(f"machine: {machine()}, 1 torch thread")


if __name__ == "__main__":
    main()
