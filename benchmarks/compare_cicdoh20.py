"""FedAuxHMTL against FedAvg on the shipped CICDOH20 flows, 3 seeds, side by side.

    python benchmarks/compare_cicdoh20.py [--seeds 0 1 2] [--labeled 0.1 0.01]

Each seed builds one data object (capture-level test split, Dirichlet partition, label mask) that
both methods share, so the comparison is paired. Prints a markdown table of held-out main-task
accuracy and macro F1 after the last round, and rounds to ``target_accuracy`` (0.95 in the config).
"""

from __future__ import annotations

import argparse
import statistics
import time

from fedaux.config import load_config
from fedaux.data.samples import build_federated_data
from fedaux.train import build_orchestrator

METHODS = {"FedAuxHMTL": "conf/cicdoh20.yaml", "FedAvg": "conf/cicdoh20_fedavg.yaml"}
QUIET = ["logging.progress=false", "logging.wandb.mode=disabled", "logging.energy=false", "logging.plots=false"]


def one_run(config: str, seed: int, labeled: float, data=None):
    from fedaux.callbacks import CommunicationTracker, RoundTimer

    cfg = load_config(config, [f"seed={seed}", f"data.labeled_fraction={labeled}", *QUIET])
    if data is None:
        data = build_federated_data(cfg.data, cfg.federated.base_stations, cfg.federated.edge_servers, cfg.seed)
    orchestrator = build_orchestrator(cfg, data, callbacks=[CommunicationTracker(), RoundTimer()])
    return orchestrator.run(), data


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--labeled", type=float, nargs="+", default=[0.1])
    args = parser.parse_args()
    start = time.perf_counter()
    print("| labels | method | final accuracy | final macro F1 | rounds to 0.95 (seeds reaching it) | per seed F1 |")
    print("|---|---|---|---|---|---|")
    for labeled in args.labeled:
        results: dict[str, list[dict]] = {m: [] for m in METHODS}
        for seed in args.seeds:
            data = None
            for method, config in METHODS.items():
                summary, data = one_run(config, seed, labeled, data)
                results[method].append(summary)
        for method, runs in results.items():
            per_seed = ", ".join(f"{r['final_f1']:.3f}" for r in runs)
            reached = [r["rounds_to_target"] for r in runs if r["rounds_to_target"] is not None]
            print(f"| {labeled:g} | {method} | {_mean_std([r['final_accuracy'] for r in runs])} | "
                  f"{_mean_std([r['final_f1'] for r in runs])} | {_mean_std(reached)} ({len(reached)}/{len(runs)}) | "
                  f"{per_seed} |", flush=True)
    print(f"\n{len(args.seeds)} seeds, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
