"""``fedaux-bench``: every table and plot of ``docs/results.md`` from ``conf/bench.yaml``.

Sections: one leaderboard per entry of ``leaderboards`` (methods on identical data, paired by
seed, or by (fold, seed) where the board cross-validates: ``folds``), the auxiliary-task
``ablation``, the leave-one-service-out ``unknown`` board, the ``sensitivity`` sweeps and the
``scale`` points. ``--only`` recomputes some sections and keeps the others from the last ``results.json``. Finished runs are
cached one file each (``cache``), so a killed benchmark restarts where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from fedaux.bench.config import board_folds, load_bench_config, sections
from fedaux.bench.plan import plan
from fedaux.bench.report import plot_board, plot_scatter, plot_sensitivity, render, significance_findings
from fedaux.bench.runs import DataCache, RunCache, RunSpec, execute, run_quiet
from fedaux.bench.stats import board_stats, describe
from fedaux.errors import ConfigError

__all__ = ["DataCache", "RunSpec", "main", "run_bench", "run_quiet"]


def machine() -> str:
    """The CPU model and core count (figures that depend on the machine name it)."""
    import torch

    model = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores of {model}, torch {torch.__version__} on CPU"


def _board_result(name: str, board, runs_by_method: dict[str, list[dict]], bench, fig_dir: Path) -> dict[str, Any]:
    stats = board_stats(runs_by_method, board.baseline, board.reference, bench.confidence)
    for method, method_runs in runs_by_method.items():
        stats[method]["extra"] = {col: describe([r["summary"].get(col) for r in method_runs], bench.confidence)
                                  for col in [*board.columns, *([board.scatter] if board.scatter else [])]}
    first = next(iter(runs_by_method.values()))[0]
    personal = {}
    for method, method_runs in runs_by_method.items():
        key = "personal/local_acc/" + first["summary"].get("accuracy_key", "val/acc/x").rsplit("/", 1)[-1]
        if all(key in r["history"][-1] for r in method_runs):
            personal[method] = describe([r["history"][-1][key] for r in method_runs], bench.confidence)
    plot_board(runs_by_method, fig_dir / f"{name}.png", board.title or name)
    if board.scatter:
        plot_scatter(stats, board.scatter, fig_dir / f"{name}_{board.scatter}.png", board.title or name)
    return {
        "machine": machine(),
        "config": OmegaConf.to_container(board),
        "seeds": list(board.seeds or bench.seeds),
        "folds": board_folds(bench, board),
        "rounds": first["summary"]["rounds"],
        "target_accuracy": first["summary"]["target_accuracy"],
        "stats": stats,
        "personal_local": personal,
    }


def run_bench(config_path: str, overrides: list[str], only: list[str] | None = None, progress: bool = True) -> dict:
    """Run (or take from the cache) every run the chosen sections need; write results.json and results.md."""
    warnings.filterwarnings("ignore")
    bench, conf_dir = load_bench_config(config_path, overrides)
    valid = sections(bench)
    bad = [s for s in only or [] if s not in valid]
    if bad:
        raise ConfigError(f"--only {bad[0]!r} is not a section of {config_path}; choose from {valid}")
    parts = set(only or bench.default_sections or valid)
    out_dir = Path(bench.output)
    fig_dir = out_dir / "results"
    fig_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = plan(bench, conf_dir, parts)
    specs = [spec for row in rows.values() for spec in row]
    cache = RunCache(bench.cache)
    cached_before = sum(cache.get(k) is not None for k in {s.key() for s in specs})
    results_by_spec = execute(specs, cache, bench.jobs, bench.energy, _progress_printer() if progress else None)
    unique = len({s.key() for s in specs})

    previous_path = fig_dir / "results.json"
    previous = json.loads(previous_path.read_text()) if previous_path.is_file() else {}
    results: dict[str, Any] = {"boards": {}, "machine": machine(), "jobs": bench.jobs,
                               "threads": max(1, (os.cpu_count() or 1) // bench.jobs)}
    boards = {**bench.leaderboards, **({"ablation": bench.ablation} if bench.ablation is not None else {})}
    for name, board in boards.items():
        if name in parts:
            runs_by_method = {m: [results_by_spec[s] for s in rows[(name, m, None)]] for m in board.methods}
            results["boards"][name] = _board_result(name, board, runs_by_method, bench, fig_dir)
        elif name in previous.get("boards", {}):
            # A board kept from an earlier invocation names the machine that measured it.
            results["boards"][name] = {"machine": previous.get("machine"), **previous["boards"][name]}
    if "unknown" in parts and bench.unknown is not None:
        from fedaux.bench.unknown import unknown_board

        results["unknown"] = unknown_board(bench, rows, results_by_spec, bench.confidence)
        results["unknown"]["machine"] = results["machine"]
    elif previous.get("unknown"):
        results["unknown"] = {"machine": previous.get("machine"), **previous["unknown"]}
    if "sensitivity" in parts and bench.sensitivity:
        results["sensitivity"], results["sensitivity_keys"] = {}, {}
        for axis, spec in bench.sensitivity.items():
            methods = list(spec.methods or bench.sensitivity_methods)
            table = {}
            for value in spec["values"]:
                runs = {m: [results_by_spec[s] for s in rows[(f"sensitivity:{axis}", m, value)]] for m in methods}
                table[str(value)] = board_stats(runs, None, None, bench.confidence)
            results["sensitivity"][axis] = table
            results["sensitivity_keys"][axis] = spec.key
            plot_sensitivity(axis, spec.key, table, fig_dir / f"sensitivity_{axis}.png")
        results["sensitivity_note"] = (f"Seeds {list(bench.sensitivity_seeds)} of the `{bench.sensitivity_board}` "
                                       f"rows; recomputed by this command with `--only sensitivity`.")
    elif previous.get("sensitivity"):
        results["sensitivity"] = previous["sensitivity"]
        results["sensitivity_keys"] = previous.get("sensitivity_keys") or {a: s.key for a, s in bench.sensitivity.items()}
        results["sensitivity_note"] = previous.get("sensitivity_note") or (
            "Seed 0, 30 rounds, from an earlier run of this command (`--only sensitivity` recomputes it; about 40 "
            "minutes); its numbers were measured on an earlier machine with 2 torch threads per run.")
    if "scale" in parts and bench.scale_base_stations:
        from fedaux.bench.scale import run_scale

        path, extra = _method(bench, conf_dir, bench.scale_board, bench.scale_method)
        results["scale"] = run_scale(path, list(bench.scale_base_stations), bench.scale_rounds,
                                     bench.scale_replicate_flows, [*bench.overrides, *extra, *bench.scale_overrides],
                                     list(bench.scale_engines), bench.scale_flower_max)
        results["scale_note"] = (f"Every flow of the embedded store repeated x{bench.scale_replicate_flows} as distinct "
                                 f"flows; {bench.scale_rounds} rounds, one process per point. Recomputed with "
                                 "`--only scale`.")
    elif previous.get("scale"):
        results["scale"] = previous["scale"]
        results["scale_note"] = previous.get("scale_note") or (
            "From an earlier run of this command on an earlier machine (`--only scale` recomputes it). Every flow of "
            "the embedded store repeated x2 as distinct flows; one process per point, peak RSS from `getrusage`, the "
            "others from /proc.")
    minutes = (time.perf_counter() - started) / 60
    results["runs_note"] = (f"This invocation needed {unique} distinct runs for {', '.join(sorted(parts))}: "
                            f"{unique - cached_before} computed now in {minutes:.1f} min, {cached_before} taken from "
                            f"the run cache (`{bench.cache}`, filled by earlier invocations of the same command).")
    results["findings"] = [line for name, board in results["boards"].items()
                           for line in significance_findings(name, board["stats"], _as_board(board["config"]), bench.alpha)]
    command = " ".join(["fedaux-bench", "--config", config_path, *overrides, *(["--only", *only] if only else [])])
    previous_path.write_text(json.dumps(results, indent=1, default=str))
    (out_dir / "results.md").write_text(render(results, bench, command))
    return results


class _as_board:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.baseline, self.reference = spec.get("baseline"), spec.get("reference")


def _method(bench, conf_dir: Path, board: str, method: str):
    from fedaux.bench.config import split_method

    return split_method(bench.leaderboards[board].methods[method], conf_dir, f"{board}.methods.{method}")


def _progress_printer():
    started = time.perf_counter()

    def report(done: int, total: int, spec: RunSpec | None) -> None:
        fold = "" if spec is None or spec.unit[0] is None else f" fold {spec.fold}/{spec.folds}"
        what = "" if spec is None else f" {Path(spec.config).name} {' '.join(spec.overrides)}{fold} seed {spec.seed}"
        print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {done}/{total} runs done{what}", flush=True)

    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fedaux-bench", description=__doc__)
    parser.add_argument("--config", default="conf/bench.yaml")
    parser.add_argument("--only", nargs="+", metavar="SECTION",
                        help="recompute these sections (leaderboard names, ablation, sensitivity, scale); "
                             "the others are kept from the last results.json")
    parser.add_argument("--scale-point", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=2, help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args(argv)
    try:
        if args.scale_point:
            from fedaux.bench.scale import scale_point

            warnings.filterwarnings("ignore")
            print(json.dumps(scale_point(Path(args.config), args.scale_point, args.rounds, overrides, Path(args.store))))
            return
        results = run_bench(args.config, overrides, args.only)
    except ConfigError as err:
        print(f"fedaux-bench: error: {err}", file=sys.stderr)
        sys.exit(2)
    for name, board in results["boards"].items():
        for method, s in board["stats"].items():
            acc = s["final_accuracy"]
            print(f"{name:<16} {method:<18} final {acc['mean']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}]  "
                  f"rounds to target {s['rounds_to_target_censored']['mean']:.1f} ({s['reached']}/{s['seeds']} reached)")
