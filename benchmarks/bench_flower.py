"""Benchmark: seconds per round on Flower's simulation engine against the in-process engine.

Usage: python benchmarks/bench_flower.py [--base-stations 5 50] [--rounds 3]

Same config, seed and data for both engines; the first round of each is reported apart (Flower
starts Ray and its workers build the data then). Per-client fits use one torch thread on both
engines so the comparison is of the engines, not of thread counts.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings

import numpy as np
import torch

from fedaux.config import load_config
from fedaux.train import run


def seconds_per_round(engine: str, base_stations: int, rounds: int, out: str) -> tuple[float, float]:
    cfg = load_config("conf/quic.yaml", [
        f"federated.engine={engine}", f"federated.base_stations={base_stations}", "federated.edge_servers=2",
        f"federated.rounds={rounds}", f"output_dir={out}", "logging.wandb.mode=disabled", "logging.progress=false",
        "logging.energy=false", "logging.plots=false", "federated.flower.torch_threads=1",
    ])
    result = run(cfg)
    times = [r["time/round_s"] for r in result.history]
    return times[0], float(np.mean(times[1:])) if len(times) > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-stations", type=int, nargs="+", default=[5, 50])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    print(f"{'base stations':>13} {'engine':>10} {'round 1 s':>10} {'later rounds s':>15}")
    with tempfile.TemporaryDirectory() as out:
        for n in args.base_stations:
            rows = {engine: seconds_per_round(engine, n, args.rounds, out) for engine in ("inprocess", "flower")}
            for engine, (first, later) in rows.items():
                print(f"{n:>13} {engine:>10} {first:>10.2f} {later:>15.2f}", flush=True)
            print(f"{n:>13} {'ratio':>10} {'':>10} {rows['flower'][1] / rows['inprocess'][1]:>15.2f}  (flower / in-process)")


if __name__ == "__main__":
    main()
