"""``fedaux-bench``: FedAuxHMTL against FedAvg and MT-DNN-FL on identical partitions, seeds and labels.

Driven by a config such as ``conf/bench.yaml``; writes ``docs/results.md`` (tables and plots, each
with the command that regenerates it), the PNG plots and ``results.json`` with every number.
Every method of a seed trains on the same data object: same test flows, same partition, same
windows and the same label masks; only the model config differs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from fedaux.callbacks import CommunicationTracker, EnergyTracker, RoundTimer
from fedaux.config import ConfigError, load_config
from fedaux.data.samples import build_federated_data
from fedaux.data.sources import load_flows
from fedaux.federated.aggregation import state_nbytes
from fedaux.federated.hooks import RoundCallback
from fedaux.train import build_orchestrator


# ---------------------------------------------------------------------------------------- config
@dataclass
class SweepAxis:
    key: str = "???"  # an experiment config key
    values: list[Any] = field(default_factory=list)
    methods: list[str] | None = None  # default: sensitivity_methods


@dataclass
class BenchConfig:
    methods: dict[str, str] = field(
        default_factory=lambda: {"fedauxhmtl": "quic.yaml", "fedavg": "fedavg.yaml", "mtdnnfl": "mtdnnfl.yaml"}
    )
    baseline: str = "fedavg"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    overrides: list[str] = field(default_factory=list)  # applied to every run
    output: str = "docs"  # results.md goes here, plots and JSON under <output>/results/
    energy: bool = True
    sensitivity_methods: list[str] = field(default_factory=lambda: ["fedauxhmtl", "fedavg"])
    sensitivity_seeds: list[int] = field(default_factory=lambda: [0])
    sensitivity: dict[str, SweepAxis] = field(default_factory=dict)
    scale_base_stations: list[int] = field(default_factory=list)
    scale_rounds: int = 2
    scale_replicate_flows: int = 2  # copies of every flow, so 200 base stations each get whole flows


def load_bench_config(path: str | Path, overrides: list[str] = ()) -> tuple[OmegaConf, Path]:
    path = Path(path)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(BenchConfig), OmegaConf.load(path),
                              OmegaConf.from_dotlist([o.removeprefix("--") for o in overrides]))
    except Exception as err:
        raise ConfigError(f"{path}: {err}".splitlines()[0]) from None
    for name in [cfg.baseline, *cfg.sensitivity_methods] + [m for a in cfg.sensitivity.values() for m in (a.methods or [])]:
        if name not in cfg.methods:
            raise ConfigError(f"{path}: method {name!r} is not in methods {sorted(cfg.methods)}")
    return cfg, path.parent


# ---------------------------------------------------------------------------------------- one run
def run_quiet(cfg, data=None, energy: bool = True) -> dict[str, Any]:
    """One federated run with only the measuring callbacks; returns its history and summary."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    energy_cb = EnergyTracker(enabled=energy)
    orchestrator = build_orchestrator(cfg, data, callbacks=[CommunicationTracker(), RoundTimer(), energy_cb])
    summary = orchestrator.run()
    return {"history": orchestrator.history, "summary": summary, "energy_note": energy_cb.reason}


class DataCache:
    """Build each (data config, partition size, seed) once and share it across methods."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def get(self, cfg):
        key = json.dumps([OmegaConf.to_container(cfg.data), cfg.federated.base_stations, cfg.federated.edge_servers,
                          cfg.seed, cfg.model.heads[cfg.model.main_task].target], sort_keys=True)
        if key not in self._cache:
            self._cache = {}  # one data set at a time keeps memory flat
            self._cache[key] = build_federated_data(cfg.data, cfg.federated.base_stations, cfg.federated.edge_servers,
                                                    cfg.seed, main_target=cfg.model.heads[cfg.model.main_task].target)
        return self._cache[key]


# ---------------------------------------------------------------------------------------- statistics
def _mean_std(values: list[float | None]) -> tuple[float | None, float | None, int]:
    got = [v for v in values if v is not None]
    if not got:
        return None, None, 0
    return float(np.mean(got)), float(np.std(got)), len(got)


def method_stats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, spread and count over seeds of every summary figure."""
    keys = ["final_accuracy", "best_accuracy", "rounds_to_target", "MB_to_target", "compute_s_to_target",
            "time_s_to_target", "energy_kwh_to_target", "total_MB", "total_compute_s", "total_energy_kwh"]
    out = {}
    for key in keys:
        mean, std, n = _mean_std([r["summary"].get(key) for r in runs])
        out[key] = {"mean": mean, "std": std, "n": n}
    out["seeds"] = len(runs)
    # A seed that never reached the target counts as rounds + 1: a lower bound on its true value,
    # so a ratio against a baseline with such seeds is an upper bound (it can only be better).
    rounds = [len(r["history"]) for r in runs]
    censored = [r["summary"].get("rounds_to_target") or n + 1 for r, n in zip(runs, rounds)]
    out["rounds_to_target_censored"] = {"mean": float(np.mean(censored)), "std": float(np.std(censored)),
                                        "n": len(censored)}
    return out


def _fmt(stat: dict[str, Any], digits: int = 3, seeds: int | None = None) -> str:
    if stat["mean"] is None:
        return "not reached" if seeds else "n/a"
    text = f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    if seeds is not None and stat["n"] < seeds:
        text += f" ({stat['n']}/{seeds} seeds)"
    return text


def _ratio(stat: dict[str, Any], base: dict[str, Any]) -> str:
    if stat["mean"] is None or base["mean"] in (None, 0):
        return "n/a"
    return f"{stat['mean'] / base['mean']:.2f}"


# ---------------------------------------------------------------------------------------- plots
def plot_curves(curves: dict[str, list[list[dict]]], main_task: str, path: Path, title: str) -> None:
    """Mean and min-max band over seeds of accuracy against rounds and against MB."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = f"val/acc/{main_task}"
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for method, histories in curves.items():
        acc = np.array([[r[key] for r in h] for h in histories])
        mb = np.array([[r["comm/cum_bytes_total"] / 1e6 for r in h] for h in histories]).mean(0)
        rounds = np.arange(1, acc.shape[1] + 1)
        line, = left.plot(rounds, acc.mean(0), label=method)
        left.fill_between(rounds, acc.min(0), acc.max(0), alpha=0.2, color=line.get_color())
        right.plot(mb, acc.mean(0), label=method, color=line.get_color())
        right.fill_between(mb, acc.min(0), acc.max(0), alpha=0.2, color=line.get_color())
    left.set(xlabel="round", ylabel="held-out main-task accuracy", title=f"{title}: accuracy vs rounds")
    right.set(xlabel="MB sent (both directions, both tiers)", title="accuracy vs communication")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------- scale
def scale_point(config: Path, base_stations: int, rounds: int, overrides: list[str], store: Path) -> dict:
    """Time per round and peak memory at one number of base stations (run in a fresh process)."""
    cfg = load_config(config, [*overrides, f"federated.base_stations={base_stations}", "federated.edge_servers=2",
                               f"federated.rounds={rounds}", f"data.root={store}", "logging.energy=false"])
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    data = build_federated_data(cfg.data, base_stations, 2, cfg.seed)
    data_mb = (sum(c.x.nbytes for c in data.clients) + data.test.x.nbytes) / 1e6
    rss_after_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    timer, memory = RoundTimer(), RoundMemory()
    orchestrator = build_orchestrator(cfg, data, callbacks=[timer, memory])
    rss_before_rounds = _current_rss_mb()
    orchestrator.run()
    return {
        "rss_before_rounds_mb": rss_before_rounds,
        "rss_after_each_round_mb": memory.rss,
        "rss_after_rounds_mb": _current_rss_mb(),
        "base_stations": base_stations,
        "s_per_round": float(np.mean([r["time/round_s"] for r in orchestrator.history])),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_data_mb": rss_after_data,
        "data_mb": data_mb,
        "state_mb": state_nbytes(orchestrator.global_state) / 1e6,
        "flows": data.flows.num_flows,
    }


class RoundMemory(RoundCallback):
    """Resident memory at the end of every round: flat across rounds means nothing accumulates."""

    def __init__(self) -> None:
        self.rss: list[float] = []

    def on_round_end(self, orchestrator, rnd: int, record: dict[str, Any]) -> None:
        self.rss.append(_current_rss_mb())


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


# ---------------------------------------------------------------------------------------- report
def render(results: dict[str, Any], bench, command: str) -> str:
    base = results["headline"][bench.baseline]
    seeds = len(bench.seeds)
    lines = [
        "# Results: FedAuxHMTL against FedAvg and MT-DNN-FL on real QUIC flows",
        "",
        "Every number and plot on this page is written by one command, run from the repository root:",
        "",
        f"```bash\n{command}\n```",
        "",
        f"Data: the embedded UC Davis QUIC store (150 flows, 5 classes), {results['setting']}. "
        f"Seeds {list(bench.seeds)}: every method of a seed trains on the same partition, windows and label masks. "
        f"Target accuracy: {results['target_accuracy']}. Machine: {results['machine']}. Run time: "
        + ", ".join(f"{part} {minutes:.1f} min" for part, minutes in results["minutes"].items() if minutes) + "."
        + ("" if len(results["recomputed"]) == 3 else
           f" This invocation recomputed {' and '.join(results['recomputed'])} (`--only`); the other sections come "
           "from the previous run of the same command."),
        "",
        "## Headline",
        "",
        "Mean ± std over seeds. *To target* figures average the seeds that reached the target (count shown when "
        "not all did). Ratios divide a method's mean by FedAvg's (below 1 is better for rounds, MB and seconds). "
        "The censored rounds ratio counts a seed that never reached the target as rounds + 1, a lower bound for "
        "that seed, so the ratio is an upper bound when FedAvg has such seeds. MB counts both directions on both "
        "tiers (base station to edge server, edge server to top level). Compute seconds are the clients' fit times "
        "summed; timings share the machine with whatever else ran, so compare ratios within this table.",
        "",
        "| method | final acc | best acc | rounds to target | MB to target | compute s to target | energy kWh to target "
        "| rounds ratio | rounds ratio, censored | MB ratio | compute ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    energy_measured = not results["energy_note"]
    for method, stats in results["headline"].items():
        lines.append(
            f"| {method} | {_fmt(stats['final_accuracy'])} | {_fmt(stats['best_accuracy'])} "
            f"| {_fmt(stats['rounds_to_target'], 1, seeds)} | {_fmt(stats['MB_to_target'], 1, seeds)} "
            f"| {_fmt(stats['compute_s_to_target'], 1, seeds)} "
            f"| {_fmt(stats['energy_kwh_to_target'], 6, seeds) if energy_measured else 'not measured'} "
            f"| {_ratio(stats['rounds_to_target'], base['rounds_to_target'])} "
            f"| {_ratio(stats['rounds_to_target_censored'], base['rounds_to_target_censored'])} "
            f"| {_ratio(stats['MB_to_target'], base['MB_to_target'])} "
            f"| {_ratio(stats['compute_s_to_target'], base['compute_s_to_target'])} |"
        )
    lines += ["", f"Energy: {results['energy_note'] or 'measured with codecarbon from RAPL counters'}.", "",
              "![accuracy against rounds and MB](results/headline.png)", ""]
    if results.get("sensitivity"):
        lines += ["## Sensitivity", "",
                  f"Seeds {list(bench.sensitivity_seeds)}; other settings as in the headline. Each cell: final accuracy "
                  "/ rounds to target (`-` not reached).", ""]
        for axis, table in results["sensitivity"].items():
            methods = list(next(iter(table.values())).keys())
            lines += [f"### {axis} (`{bench.sensitivity[axis].key}`)", "",
                      "| value | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
            for value, by_method in table.items():
                cells = []
                for method in methods:
                    stats = by_method[method]
                    acc = stats["final_accuracy"]["mean"]
                    rounds = stats["rounds_to_target"]["mean"]
                    cells.append(f"{acc:.3f} / {'-' if rounds is None else f'{rounds:.0f}'}")
                lines.append(f"| {value} | " + " | ".join(cells) + " |")
            lines += ["", f"![{axis}](results/sensitivity_{axis}.png)", ""]
    if results.get("scale"):
        lines += ["## Scale", "",
                  f"Every flow of the embedded store repeated x{bench.scale_replicate_flows} as distinct flows so that "
                  "each base station holds whole flows; one process per point, peak RSS from `getrusage`, the others "
                  "from /proc. Regenerate with `fedaux-bench --config conf/bench.yaml --only scale`.", "",
                  "| base stations | s / round | peak RSS MB | RSS before rounds MB | RSS after each round MB | data MB "
                  "| state dict MB | all clients' states would be MB |",
                  "|---|---|---|---|---|---|---|---|"]
        for p in results["scale"]:
            per_round = " / ".join(f"{v:.0f}" for v in p["rss_after_each_round_mb"])
            lines.append(f"| {p['base_stations']} | {p['s_per_round']:.2f} | {p['peak_rss_mb']:.0f} "
                         f"| {p['rss_before_rounds_mb']:.0f} | {per_round} | {p['data_mb']:.1f} "
                         f"| {p['state_mb']:.2f} | {p['state_mb'] * p['base_stations']:.0f} |")
        lines += ["", "The aggregator folds each update into one running sum per edge server, so a round never holds "
                  "a state per base station (last column: what keeping them would take). Resident memory still rises "
                  "over the first rounds, more with more base stations (each client fit builds a Trainer and a "
                  "DataLoader), and levels off; the per-round column shows where it stands. That growth has not "
                  "been traced further.", ""]
        lines.append("")
    if results.get("findings"):
        lines += ["## Findings", "", *results["findings"], ""]
    return "\n".join(lines)


def findings(results: dict[str, Any], bench) -> list[str]:
    """Plain statements computed from the numbers (no hand-written claims)."""
    out = []
    head = results["headline"]
    base = head[bench.baseline]
    for method, stats in head.items():
        if method == bench.baseline:
            continue
        diff = stats["final_accuracy"]["mean"] - base["final_accuracy"]["mean"]
        ratio = _ratio(stats["rounds_to_target"], base["rounds_to_target"])
        out.append(f"- {method}: final accuracy {diff:+.3f} against {bench.baseline}; rounds-to-target ratio {ratio} "
                   f"(reached by {stats['rounds_to_target']['n']}/{stats['seeds']} seeds, "
                   f"{bench.baseline} {base['rounds_to_target']['n']}/{base['seeds']}).")
    for axis, table in results.get("sensitivity", {}).items():
        for value, by_method in table.items():
            if "fedauxhmtl" in by_method and bench.baseline in by_method:
                a = by_method["fedauxhmtl"]["final_accuracy"]["mean"]
                b = by_method[bench.baseline]["final_accuracy"]["mean"]
                if a < b:
                    out.append(f"- auxiliary tasks did not help at {axis}={value}: fedauxhmtl {a:.3f} vs "
                               f"{bench.baseline} {b:.3f} final accuracy.")
    return out


# ---------------------------------------------------------------------------------------- main
def run_bench(config_path: str, overrides: list[str], only: list[str] | None = None) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    warnings.filterwarnings("ignore")
    bench, conf_dir = load_bench_config(config_path, overrides)
    parts = set(only or ["headline", "sensitivity", "scale"])
    out_dir = Path(bench.output)
    fig_dir = out_dir / "results"
    fig_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cache = DataCache()

    def experiment(method: str, seed: int, extra: list[str] = ()):
        return load_config(conf_dir / bench.methods[method], [*bench.overrides, *extra, f"seed={seed}",
                                                               "logging.wandb.mode=disabled", "logging.progress=false"])

    jobs: list[tuple[str, Any, str, int, list[str]]] = []  # (section, axis value, method, seed, overrides)
    if "headline" in parts:
        jobs += [("headline", None, m, s, []) for s in bench.seeds for m in bench.methods]  # seed-major: data reuse
    if "sensitivity" in parts:
        for axis, spec in bench.sensitivity.items():
            for value in spec["values"]:
                for s in bench.sensitivity_seeds:
                    for m in spec.methods or bench.sensitivity_methods:
                        jobs.append((axis, value, m, s, [f"{spec.key}={value}"]))
    runs: dict[tuple, list[dict]] = {}
    energy_notes = set()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task("runs", total=len(jobs))
        for section, value, method, seed, extra in jobs:
            bar.update(task, description=f"{section} {'' if value is None else value} {method} seed {seed}")
            cfg = experiment(method, seed, extra)
            result = run_quiet(cfg, cache.get(cfg), energy=bench.energy)
            energy_notes.add(result.pop("energy_note"))
            runs.setdefault((section, value, method), []).append(result)
            bar.advance(task)

    cfg0 = experiment(next(iter(bench.methods)), bench.seeds[0])
    results: dict[str, Any] = {
        "main_task": cfg0.model.main_task,
        "target_accuracy": cfg0.target_accuracy,
        "setting": (f"{cfg0.federated.base_stations} base stations under {cfg0.federated.edge_servers} edge servers, "
                    f"{cfg0.data.partition.scheme} partition (alpha {cfg0.data.partition.alpha}), "
                    f"{cfg0.data.labeled_fraction:.0%} main labels, {cfg0.federated.rounds} rounds of "
                    f"{cfg0.federated.local_epochs} local epoch(s)"),
        "machine": f"{os.cpu_count()} CPU cores, torch CPU",
        "energy_note": "; ".join(sorted(n for n in energy_notes if n)),
        "runs": {f"{s}|{v}|{m}": r for (s, v, m), r in runs.items()},
    }
    if "headline" in parts:
        results["headline"] = {m: method_stats(runs[("headline", None, m)]) for m in bench.methods}
        plot_curves({m: [r["history"] for r in runs[("headline", None, m)]] for m in bench.methods},
                    results["main_task"], fig_dir / "headline.png", "headline")
    if "sensitivity" in parts and bench.sensitivity:
        results["sensitivity"] = {}
        for axis, spec in bench.sensitivity.items():
            methods = spec.methods or bench.sensitivity_methods
            results["sensitivity"][axis] = {
                str(v): {m: method_stats(runs[(axis, v, m)]) for m in methods} for v in spec["values"]}
            _plot_sensitivity(axis, spec, methods, runs, fig_dir / f"sensitivity_{axis}.png")
    if "scale" in parts and bench.scale_base_stations:
        store = replicated_store(bench.scale_replicate_flows, Path("outputs/bench/replicated_store.npz"))
        config = conf_dir / bench.methods[next(iter(bench.methods))]
        results["scale"] = []
        for n in bench.scale_base_stations:
            proc = subprocess.run(
                [sys.executable, "-m", "fedaux.bench", "--scale-point", str(n), "--config", str(config),
                 "--store", str(store), "--rounds", str(bench.scale_rounds), *bench.overrides],
                capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"scale point {n} failed:\n{proc.stderr[-2000:]}")
            results["scale"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    results["minutes"] = {"+".join(sorted(parts)): (time.perf_counter() - started) / 60}
    results["recomputed"] = sorted(parts)
    results = _merge_previous(fig_dir / "results.json", results, parts)
    results["bench_minutes"] = sum(v for v in results["minutes"].values() if v)
    results["findings"] = findings(results, bench) if "headline" in results else []
    command = " ".join(["fedaux-bench", "--config", config_path, *overrides])
    (fig_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    if "headline" in results:
        (out_dir / "results.md").write_text(render(results, bench, command))
    return results


def _merge_previous(path: Path, results: dict[str, Any], parts: set[str]) -> dict[str, Any]:
    """With ``--only``, keep the sections of the last full run that were not recomputed."""
    if parts == {"headline", "sensitivity", "scale"} or not path.is_file():
        return results
    previous = json.loads(path.read_text())
    for part in ("headline", "sensitivity", "scale"):
        if part not in parts and part in previous:
            results[part] = previous[part]
            results["minutes"].update({k: v for k, v in previous.get("minutes", {}).items() if part in k})
            results["runs"].update({k: v for k, v in previous["runs"].items() if k.split("|")[0] != "headline"}
                                   if part == "sensitivity" else
                                   {k: v for k, v in previous["runs"].items() if k.startswith("headline|")}
                                   if part == "headline" else {})
    for key in ("energy_note", "setting", "target_accuracy"):
        results.setdefault(key, previous.get(key))
    return results


def _plot_sensitivity(axis, spec, methods, runs, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [str(v) for v in spec["values"]]
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        accs = [np.mean([r["summary"]["final_accuracy"] for r in runs[(axis, v, method)]]) for v in spec["values"]]
        ax.bar(np.arange(len(labels)) + i * width, accs, width, label=method)
    ax.set_xticks(np.arange(len(labels)) + width * (len(methods) - 1) / 2, labels)
    ax.set(xlabel=spec.key, ylabel="final accuracy", ylim=(0, 1), title=f"sensitivity: {axis}")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fedaux-bench", description=__doc__)
    parser.add_argument("--config", default="conf/bench.yaml")
    parser.add_argument("--only", nargs="+", choices=("headline", "sensitivity", "scale"))
    parser.add_argument("--scale-point", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=2, help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args(argv)
    try:
        if args.scale_point:
            warnings.filterwarnings("ignore")
            point = scale_point(Path(args.config), args.scale_point, args.rounds, overrides, Path(args.store))
            print(json.dumps(point))
            return
        results = run_bench(args.config, overrides, args.only)
    except (ConfigError, ValueError) as err:
        print(f"fedaux-bench: error: {err}", file=sys.stderr)
        sys.exit(2)
    head = results.get("headline", {})
    for method, stats in head.items():
        print(f"{method:<12} final {_fmt(stats['final_accuracy'])}  rounds to target "
              f"{_fmt(stats['rounds_to_target'], 1, stats['seeds'])}  MB to target {_fmt(stats['MB_to_target'], 1, stats['seeds'])}")


if __name__ == "__main__":
    main()
