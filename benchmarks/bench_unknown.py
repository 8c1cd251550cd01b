"""Leave-one-service-out unknown-traffic detection: each class left out of training in turn.

    python benchmarks/bench_unknown.py [--config conf/quic.yaml] [--classes A,B] [key=value ...]

For every main-task class of the config's data, one run with ``data.exclude_classes=[that class]``
(its flows become unknown test flows); per unknown score (fedaux/unknown.py) the AUROC of the run's
known test flows against them and the share of them rejected at the threshold keeping 95% of the
known test flows, as the run's ``summary.json`` reports them (``unknown_detection``), then the mean
over the left-out classes. Overrides apply to every run (e.g. ``federated.rounds=5``).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    from fedaux.config import load_config
    from fedaux.data.sources import load_flows
    from fedaux.train import run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="conf/quic.yaml")
    parser.add_argument("--classes", default=None, help="comma-separated classes to leave out (default: every class)")
    parser.add_argument("--output-dir", default=None, help="where the runs go (default: a temporary folder)")
    args, overrides = parser.parse_known_args()
    base = load_config(args.config, overrides)
    classes = args.classes.split(",") if args.classes else list(load_flows(base.data.root, base.data)[0].class_names)
    quiet = ["logging.progress=false", "logging.energy=false", "logging.plots=false", "logging.wandb.mode=disabled"]
    print(f"{args.config} {' '.join(overrides)}: leave one of {len(classes)} classes out; {_cpu()}, "
          f"{len(os.sched_getaffinity(0))} cores")
    rows: dict[str, dict[str, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in classes:
            start = time.perf_counter()
            cfg = load_config(args.config, [*overrides, *quiet, f"output_dir={args.output_dir or tmp}",
                                            f"data.exclude_classes=[{name}]"])
            summary = run(cfg).summary
            detection = summary.get("unknown_detection", {})
            rows[name] = {score: (r["auroc"], r["rejected_at_95_known"]) for score, r in detection.items()}
            cells = "  ".join(f"{score} {a:.3f} / {rej:.0%}" for score, (a, rej) in rows[name].items())
            print(f"left out {name!r}: accuracy {summary['final_accuracy']:.3f}; AUROC / rejected at 95% known: "
                  f"{cells}  ({time.perf_counter() - start:.0f} s)", flush=True)
    scores = sorted({s for r in rows.values() for s in r})
    print("\nmean over left-out classes (AUROC, share of unknown flows rejected at 95% of known flows kept):")
    for score in scores:
        values = np.array([r[score] for r in rows.values() if score in r], dtype=float)
        print(f"  {score:<12} AUROC {values[:, 0].mean():.3f}  rejected {values[:, 1].mean():.1%}  "
              f"(min AUROC {values[:, 0].min():.3f}, {len(values)} classes)")


if __name__ == "__main__":
    main()
