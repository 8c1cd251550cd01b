"""Inference speed on one core: eager PyTorch, TorchScript and ONNX Runtime, measured in one run.

    python benchmarks/bench_inference.py [--run RUN_DIR] [--seconds 3]

For batch sizes 1, 32 (one flow's windows at the default 32 windows per flow) and 64: windows per
second, and p50/p99 latency of one call, each ratio to eager PyTorch; and how often each engine's
predicted main-task class equals eager PyTorch's on every window (int8 quantisation is not exact). Everything runs pinned to one
core with one thread. Without ``--run`` it trains a 1-round run of conf/quic.yaml first (the
weights do not change the speed). Inputs are real windows of the shipped flows.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedaux.data.flows import FlowCollection
from fedaux.export import export_run, load_exported
from fedaux.inference import TrainedRun, flow_windows

BATCHES = (1, 32, 64)


def _train(tmp: Path) -> Path:
    from fedaux.config import load_config
    from fedaux.train import run

    cfg = load_config("conf/quic.yaml", [f"output_dir={tmp}", "federated.rounds=1", "logging.progress=false",
                                         "logging.energy=false", "logging.plots=false", "logging.wandb.mode=disabled"])
    return run(cfg).run_dir


def measure(predict, windows: np.ndarray, batch: int, seconds: float) -> tuple[float, float, float]:
    """(windows per second, p50 ms, p99 ms) of ``predict`` on consecutive batches for ``seconds``."""
    for start in range(0, 20 * batch, batch):  # warm-up
        predict(windows[start % (len(windows) - batch):][:batch])
    latencies = []
    begin = time.perf_counter()
    i = 0
    while time.perf_counter() - begin < seconds:
        chunk = windows[(i * batch) % (len(windows) - batch):][:batch]
        t0 = time.perf_counter()
        predict(chunk)
        latencies.append(time.perf_counter() - t0)
        i += 1
    total = sum(latencies)
    return batch * len(latencies) / total, 1e3 * np.percentile(latencies, 50), 1e3 * np.percentile(latencies, 99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="a finished run folder (default: train one round first)")
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per engine and batch size")
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.run) if args.run else _train(Path(tmp))
        run = TrainedRun.load(run_dir)
        windows, _, _ = flow_windows(FlowCollection.load(), run.info["features"], run.info["packets"], run.window_spec())
        engines = {"eager PyTorch": run.predictor()}
        for name, fmt in (("TorchScript", "torchscript"), ("ONNX Runtime", "onnx"), ("ONNX Runtime int8", "onnx-int8")):
            engines[name], _ = load_exported(export_run(run, fmt, Path(tmp) / f"model.{fmt}"), threads=1)
        results = {(name, b): measure(engine, windows, b, args.seconds) for b in BATCHES for name, engine in engines.items()}
        reference = engines["eager PyTorch"](windows)
        agreement = {name: float(np.mean(engine(windows)[run.model.main_task].argmax(1)
                                          == reference[run.model.main_task].argmax(1))) for name, engine in engines.items()}
    print(f"\n{platform.processor() or platform.machine()}, one core, one thread; {len(windows):,} real windows "
          f"(3 x 60); torch {torch.__version__}\n")
    print("| engine | batch | windows/s | ratio to eager | p50 ms per call | p99 ms per call | same class as eager |")
    print("|---|---|---|---|---|---|---|")
    for b in BATCHES:
        base = results[("eager PyTorch", b)][0]
        for name in engines:
            rate, p50, p99 = results[(name, b)]
            print(f"| {name} | {b} | {rate:,.0f} | {rate / base:.2f} | {p50:.3f} | {p99:.3f} | {agreement[name]:.2%} |")


if __name__ == "__main__":
    main()
