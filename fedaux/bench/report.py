"""``docs/results.md`` and its plots, from the benchmark's results (no number typed by hand)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _ci(stat: dict[str, Any], digits: int = 3) -> str:
    if stat["mean"] is None:
        return "-"
    if stat["low"] == stat["high"]:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} [{stat['low']:.{digits}f}, {stat['high']:.{digits}f}]"


def _p(value: float | None) -> str:
    return "n/a" if value is None else (f"{value:.3f}" if value >= 0.001 else "<0.001")


def _versus(test: dict[str, Any] | None, alpha: float, digits: int = 3) -> str:
    """``+0.021 (t 0.040*, W 0.125)``: mean paired difference, t-test and Wilcoxon p-values."""
    if not test or test["diff"] is None:
        return ""
    mark = "*" if test["t_p"] is not None and test["t_p"] < alpha else ""
    return f"{test['diff']:+.{digits}f} (t {_p(test['t_p'])}{mark}, W {_p(test['wilcoxon_p'])})"


_NONE: dict[str, Any] = {"mean": None}  # a figure a board from an older results.json lacks


def _ratio(stat: dict[str, Any], base: dict[str, Any] | None) -> str:
    if base is None or stat["mean"] is None or not base["mean"]:
        return "-"
    return f"{stat['mean'] / base['mean']:.2f}"


def board_table(stats: dict[str, Any], board, alpha: float) -> list[str]:
    base, ref = board.baseline, board.reference
    columns = list(getattr(board, "columns", []) or [])
    head = ["method", "window acc", "flow acc", "macro F1", "rounds to target", "reached", "MB to target",
            "compute s to target", *columns]
    if base:
        head += [f"MB to target / {base}"]
    if base:
        head += [f"acc vs {base}", f"rounds vs {base}"]
    if ref:
        head += [f"acc vs {ref}", f"rounds vs {ref}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, s in stats.items():
        cells = [f"`{method}`", _ci(s["final_accuracy"]), _ci(s.get("final_flow_accuracy", _NONE)), _ci(s["final_f1"]),
                 _ci(s["rounds_to_target_censored"], 1),
                 f"{s['reached']}/{s['seeds']}", _ci(s["MB_to_target"], 1), _ci(s["compute_s_to_target"], 1)]
        cells += [_ci(s.get("extra", {}).get(col, {"mean": None}), 2) for col in columns]
        if base:
            cells.append(_ratio(s["MB_to_target"], stats.get(base, {}).get("MB_to_target")))
        for role, other in (("vs_baseline", base), ("vs_reference", ref)):
            if other:
                test = s.get(role) or {}
                cells += [_versus(test.get("final_accuracy"), alpha), _versus(test.get("rounds_to_target_censored"), alpha, 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def significance_findings(name: str, stats: dict[str, Any], board, alpha: float) -> list[str]:
    """One line per comparison: significant or not, in plain words."""
    def verdict(test: dict[str, Any]) -> str:
        return "significant" if test.get("t_p") is not None and test["t_p"] < alpha else "not significant"

    out = []
    for method, s in stats.items():
        for role, other in (("vs_baseline", board.baseline), ("vs_reference", board.reference)):
            test = (s.get(role) or {}).get("final_accuracy")
            if not test or test["diff"] is None:
                continue
            rounds = (s.get(role) or {}).get("rounds_to_target_censored") or {}
            flow = (s.get(role) or {}).get("final_flow_accuracy") or {}
            flow_part = (f"; flow accuracy {flow['diff']:+.3f} ({verdict(flow)}, p={_p(flow['t_p'])})"
                         if flow.get("diff") is not None else "")
            out.append(f"- {name}: `{method}` vs `{other}`: final accuracy {test['diff']:+.3f} ({verdict(test)}, paired t "
                       f"p={_p(test['t_p'])}){flow_part}; rounds to target {rounds.get('diff', 0) or 0:+.1f} "
                       f"({verdict(rounds)}).")
    return out


def plot_board(runs: dict[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    """Mean and min-max band over seeds of each method's headline accuracy against rounds and MB."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for method, method_runs in runs.items():
        key = method_runs[0]["summary"].get("accuracy_key", "val/acc/traffic_class")
        acc = np.array([[r[key] for r in run["history"]] for run in method_runs])
        mb = np.array([[r["comm/cum_bytes_total"] / 1e6 for r in run["history"]] for run in method_runs]).mean(0)
        rounds = np.arange(1, acc.shape[1] + 1)
        line, = left.plot(rounds, acc.mean(0), label=method)
        left.fill_between(rounds, acc.min(0), acc.max(0), alpha=0.12, color=line.get_color())
        right.plot(mb, acc.mean(0), label=method, color=line.get_color())
    left.set(xlabel="round", ylabel="main-task accuracy (held-out flows)", title=f"{title}: accuracy vs rounds")
    right.set(xlabel="MB sent (both directions, both tiers)", title="accuracy vs communication")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_scatter(stats: dict[str, Any], key: str, path: Path, title: str) -> None:
    """Final accuracy against a summary figure (e.g. epsilon), one line per method family (the
    row name's first word); rows without the figure (no privacy) as dashed reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    families: dict[str, list[tuple[float, float, float, float]]] = {}
    for method, s in stats.items():
        x = s.get("extra", {}).get(key, {}).get("mean")
        acc = s["final_accuracy"]
        if x is None or not np.isfinite(x):
            ax.axhline(acc["mean"], linestyle="--", linewidth=1, color="grey")
            ax.annotate(f"{method} (no DP)", (0, acc["mean"]), xycoords=("axes fraction", "data"), fontsize=7)
            continue
        families.setdefault(method.split(" ")[0], []).append((x, acc["mean"], acc["low"], acc["high"]))
    for family, points in families.items():
        points.sort()
        xs, ys, lo, hi = map(np.array, zip(*points))
        ax.errorbar(xs, ys, yerr=[ys - lo, hi - ys], marker="o", capsize=3, label=family)
    ax.set(xscale="log", xlabel=key, ylabel="final main-task accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_sensitivity(axis: str, key: str, table: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(table)
    methods = list(next(iter(table.values())))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        accs = [table[v][method]["final_accuracy"]["mean"] for v in labels]
        ax.bar(np.arange(len(labels)) + i * width, accs, width, label=method)
    ax.set_xticks(np.arange(len(labels)) + width * (len(methods) - 1) / 2, labels)
    ax.set(xlabel=key, ylabel="final accuracy", ylim=(0, 1), title=f"sensitivity: {axis}")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _rounds(stats: dict[str, Any]) -> float | None:
    entry = stats.get("rounds_to_target_censored") or stats.get("rounds_to_target") or {}
    return entry.get("mean")


def render(results: dict[str, Any], bench, command: str) -> str:
    alpha = bench.alpha
    lines = [
        "# Results: federated strategies, loss weightings, auxiliary tasks, few labels and unknown services on two "
        "traffic data sets",
        "",
        "Every number and plot on this page is written by one command, run from the repository root:",
        "",
        f"```bash\n{command}\n```",
        "",
        f"Machine: {results['machine']}. {results['runs_note']}",
        "",
        "How to read the tables. Each cell is the mean over seeds (on a cross-validated board, over folds x seeds) "
        f"with its {bench.confidence:.0%} percentile bootstrap interval (scipy.stats.bootstrap, 9,999 resamples). "
        "*Window acc* is the final round's accuracy on the held-out windows, *flow acc* on the held-out flows (a "
        "flow's class: the argmax of its windows' mean softmax), *macro F1* the windows' macro F1 (torchmetrics). "
        "Every method of a seed (and fold) trains on the same test flows, partition, windows and label masks, so "
        "methods pair up seed by seed, or by (fold, seed) where each of k folds is the test set once: "
        "*acc vs X* is the mean paired difference in final window accuracy with the paired t-test (t) and Wilcoxon "
        f"signed-rank (W) p-values (scipy.stats); `*` marks t below {alpha}. With 5 seeds the exact two-sided "
        "Wilcoxon test cannot go below 0.0625 and with 3 seeds not below 0.25, so W reaches 0.05 only on a "
        "cross-validated board (5 folds x 3 seeds: 15 pairs); a difference without `*` is not significant. *Rounds to target* counts a seed that never reached the target "
        "as rounds + 1 (a lower bound for that seed); *MB* and *compute s to target* average the seeds that reached "
        "it (*reached*). MB counts both directions on both tiers. Compute seconds are the clients' fit times summed, "
        f"measured with {results['threads']} torch thread(s) per run and {results['jobs']} runs at once: compare "
        "them within a table. Personalised methods (`fedper`, `fedrep`) are scored by their base stations' own "
        "models on the held-out flows (`personal/acc`): the global model's heads are never trained there.",
        "",
    ]
    for name, board in results["boards"].items():
        spec = board["config"]
        folds = int(board.get("folds") or 0)
        runs = f"{folds} folds x seeds {board['seeds']}, paired by (fold, seed)" if folds >= 2 else f"Seeds {board['seeds']}"
        measured = (f"Measured on {board['machine']} (an earlier invocation). "
                    if board.get("machine") and board["machine"] != results["machine"] else "")
        lines += [f"## {spec['title'] or name}", "", spec["about"] or "", "",
                  f"{measured}{runs}; target accuracy {board['target_accuracy']}; "
                  f"{board['rounds']} rounds. Rows: " + "; ".join(f"`{m}`: `{d}`" for m, d in spec["methods"].items())
                  + ".", ""]
        lines += board_table(board["stats"], _Board(spec), alpha)
        if name == "ablation":
            lines += ["", "Personal scores on each base station's own class mix do not apply here (no personalised "
                      "method)."]
        lines += ["", f"![{name}](results/{name}.png)", ""]
        if spec.get("scatter"):
            lines += [f"![{name}: accuracy against {spec['scatter']}](results/{name}_{spec['scatter']}.png)", ""]
        personal = {m: s for m, s in board.get("personal_local", {}).items()}
        if personal:
            lines += ["Personalised methods on each base station's own class mix (`personal/local_acc`: held-out "
                      "flows reweighted to the base station's labelled class shares, sample-weighted over base "
                      "stations), final round: " + "; ".join(f"`{m}` {_ci(s)}" for m, s in personal.items()) + ".", ""]
    if results.get("unknown"):
        from fedaux.bench.unknown import render_unknown

        lines += render_unknown(results["unknown"], results["machine"])
    if results.get("sensitivity"):
        lines += ["## Sensitivity", "", results.get("sensitivity_note", ""), "",
                  "Each cell: final accuracy / rounds to target (censored mean).", ""]
        for axis, table in results["sensitivity"].items():
            methods = list(next(iter(table.values())).keys())
            lines += [f"### {axis} (`{results['sensitivity_keys'].get(axis, axis)}`)", "",
                      "| value | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
            for value, by_method in table.items():
                cells = []
                for method in methods:
                    acc = by_method[method]["final_accuracy"]["mean"]
                    rounds = _rounds(by_method[method])
                    cells.append(f"{acc:.3f} / {'-' if rounds is None else f'{rounds:.0f}'}")
                lines.append(f"| {value} | " + " | ".join(cells) + " |")
            lines += ["", f"![{axis}](results/sensitivity_{axis}.png)", ""]
    if results.get("scale"):
        lines += ["## Scale", "", results.get("scale_note", ""), "",
                  "| base stations | engine | workers | s / round | peak RSS MB | RSS before rounds MB | RSS after each round MB "
                  "| workers' RSS after each round MB | data MB | state dict MB | all clients' states would be MB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in results["scale"]:
            per_round = " / ".join(f"{v:.0f}" for v in p["rss_after_each_round_mb"])
            workers = " / ".join(f"{v:.0f}" for v in p.get("worker_rss_after_each_round_mb", [])) or "-"
            engine = p.get("engine", "inprocess")
            if engine != "inprocess":
                workers = "not counted (Ray's processes)"
            folded = " (folding)" if p.get("fold_in_workers") else ""
            lines.append(f"| {p['base_stations']} | {engine} | "
                         f"{str(p.get('workers', 1)) + folded if engine == 'inprocess' else '-'} "
                         f"| {p['s_per_round']:.2f} | {p['peak_rss_mb']:.0f} "
                         f"| {p['rss_before_rounds_mb']:.0f} | {per_round} | {workers} | {p['data_mb']:.1f} "
                         f"| {p['state_mb']:.2f} | {p['state_mb'] * p['base_stations']:.0f} |")
        lines += ["", "The aggregator folds each update into one running sum per edge server, so a round never holds "
                  "a state per base station (last column: what keeping them would take); worker processes hold the "
                  "model, the clients' windows and at most two updates each in flight, or, where they fold their "
                  "edge servers themselves (`federated.fold_in_workers`, by default from 100 base stations per "
                  "worker: \"(folding)\"), one running sum per edge server.", ""]
    if results.get("findings"):
        lines += ["## Findings", "", "Computed from the tables above (paired t-test at "
                  f"{alpha}; no statement here is typed by hand).", "", *results["findings"], ""]
    return "\n".join(lines)


class _Board:
    """Attribute access to a board's saved config (results.json keeps it as a dict)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.baseline, self.reference = spec.get("baseline"), spec.get("reference")
        self.columns = spec.get("columns") or []
