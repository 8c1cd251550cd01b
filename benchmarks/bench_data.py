"""Benchmark: parse the raw shared flows and load the embedded store.

Usage: python benchmarks/bench_data.py [--raw ../shared/data/ucdavis-quic-script] [--repeat 3]

Reports the best of ``--repeat`` runs, and, as a ratio, the cost of fedaux's validation and
assembly over a bare ``np.loadtxt`` of every file (no checks) measured in the same run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from fedaux.data.flows import FlowCollection
from fedaux.data.reader import read_raw_folder


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", default=str(Path(__file__).resolve().parents[2] / "shared/data/ucdavis-quic-script"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    flows, _ = read_raw_folder(args.raw)
    files = sorted(Path(args.raw).glob("*/*.txt"))
    parse_s = best_of(args.repeat, lambda: read_raw_folder(args.raw))
    loadtxt_s = best_of(1, lambda: [np.loadtxt(f) for f in files])
    load_s = best_of(args.repeat, lambda: FlowCollection.load())
    print(f"flows {flows.num_flows}, packets {flows.num_packets:,}")
    print(f"parse raw folder (fedaux reader):   {parse_s:.3f} s  ({flows.num_packets / parse_s / 1e6:.2f} M packets/s)")
    print(f"bare np.loadtxt, no checks (base):  {loadtxt_s:.3f} s  -> fedaux/base = {parse_s / loadtxt_s:.2f}")
    print(f"load embedded store:                {load_s:.3f} s")


if __name__ == "__main__":
    main()
