"""Statistics over seeds (and cross-validation folds): means with bootstrap intervals and paired
tests, through SciPy.

Every method of a seed (and fold) trains on the same test flows, partition, windows and label
masks, so two methods' results pair up by (fold, seed) and a paired test compares them. With 5 seeds the Wilcoxon
signed-rank test cannot go below p = 0.0625 (two-sided, exact), so it never reaches 0.05; the
paired t-test can, but assumes roughly normal differences. Both are reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

# Per-run figures summarised over seeds: summary key -> whether lower is better. Final accuracy
# is over held-out windows, flow accuracy over held-out flows (a flow's class: the argmax of its
# windows' mean softmax, ``val/flow_acc``), F1 the windows' macro F1 (torchmetrics).
FIGURES = {
    "final_accuracy": False,
    "final_flow_accuracy": False,
    "final_f1": False,
    "rounds_to_target_censored": True,
    "MB_to_target": True,
    "compute_s_to_target": True,
    "total_MB": True,
    "total_compute_s": True,
}


def run_figures(run: dict[str, Any]) -> dict[str, Any]:
    """The figures of one run; a run that never reached the target counts ``rounds + 1`` rounds
    (a lower bound on its true value) and has no MB or compute to target. Flow accuracy comes from
    the last round's record (``val/flow_acc/<main task>``) where the summary lacks it."""
    summary = run["summary"]
    out: dict[str, Any] = {key: summary.get(key) for key in FIGURES}
    key = summary.get("accuracy_key", "val/")
    if out["final_flow_accuracy"] is None and run.get("history"):
        out["final_flow_accuracy"] = run["history"][-1].get("val/flow_acc/" + key.rsplit("/", 1)[-1])
    if not key.startswith("val/"):
        # A personalised method's F1 and flow accuracy would be its untrained global heads'; not shown.
        out["final_f1"] = out["final_flow_accuracy"] = None
    reached = summary.get("rounds_to_target")
    out["rounds_to_target_censored"] = float(reached if reached is not None else summary["rounds"] + 1)
    out["reached"] = reached is not None
    return out


def bootstrap_interval(values: Sequence[float], confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (scipy.stats.bootstrap); a point for < 2 distinct values.

    Example:
        >>> bootstrap_interval([1.0, 1.0, 1.0])
        (1.0, 1.0)
    """
    data = np.asarray(values, dtype=float)
    if len(data) == 0:
        return (math.nan, math.nan)
    if len(data) < 2 or np.ptp(data) == 0:
        return (float(data.mean()), float(data.mean()))
    result = stats.bootstrap((data,), np.mean, confidence_level=confidence, n_resamples=9999,
                             method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def describe(values: Sequence[float | None], confidence: float = 0.95) -> dict[str, Any]:
    """Mean, bootstrap interval and count of the non-missing values."""
    got = [float(v) for v in values if v is not None]
    if not got:
        return {"mean": None, "low": None, "high": None, "n": 0}
    low, high = bootstrap_interval(got, confidence)
    return {"mean": float(np.mean(got)), "low": low, "high": high, "n": len(got)}


def paired_test(a: Sequence[float | None], b: Sequence[float | None]) -> dict[str, Any]:
    """Paired t-test and Wilcoxon signed-rank test of ``a - b`` across seeds (same seeds, same order).

    A pair with a missing value on either side (a figure a run does not have, such as a personalised
    method's global-model F1) is left out. Returns the mean difference, both p-values (None where
    undefined: fewer than 2 pairs, or all differences zero) and the number of pairs.
    """
    pairs = [(u, v) for u, v in zip(a, b, strict=True) if u is not None and v is not None]
    x, y = np.asarray([u for u, _ in pairs], dtype=float), np.asarray([v for _, v in pairs], dtype=float)
    diff = x - y
    out: dict[str, Any] = {"diff": float(diff.mean()) if len(diff) else None, "n": len(diff),
                           "t_p": None, "wilcoxon_p": None}
    if len(diff) < 2 or np.all(diff == 0):
        return out
    if np.ptp(diff) > 0:
        out["t_p"] = float(stats.ttest_rel(x, y).pvalue)
    else:  # a constant non-zero difference: t is infinite, the difference is certain for these seeds
        out["t_p"] = 0.0
    out["wilcoxon_p"] = float(stats.wilcoxon(x, y, zero_method="wilcox").pvalue)
    return out


PAIRED = ("final_accuracy", "final_flow_accuracy", "final_f1", "rounds_to_target_censored")


def run_unit(run: dict[str, Any], position: int) -> tuple[Any, Any]:
    """``(fold, seed)`` of a benchmark run (its ``spec``; fold None without cross-validation), or
    ``(None, position)`` for a run that does not say."""
    spec = run.get("spec")
    if spec is None:
        return (None, position)
    return (spec.get("fold"), spec["seed"])


def board_stats(runs: dict[str, list[dict[str, Any]]], baseline: str | None, reference: str | None,
                confidence: float = 0.95) -> dict[str, Any]:
    """Per method: every figure described over its runs (seeds, or folds x seeds), and paired
    tests against the baseline and the reference on final window and flow accuracy, final F1 and
    (censored) rounds to target, pairing runs by their (fold, seed) (:func:`run_unit`).

    Args:
        runs: method -> its runs, one per (fold, seed).

    Raises:
        ValueError: two compared methods do not have the same (fold, seed) pairs.
    """
    figures: dict[str, dict[tuple[Any, Any], dict[str, Any]]] = {}
    for method, method_runs in runs.items():
        figures[method] = {}
        for i, run in enumerate(method_runs):
            fold, seed = run_unit(run, i)
            figures[method][(fold, seed)] = {**run_figures(run), "fold": fold, "seed": seed}
    out: dict[str, Any] = {}
    for method, by_unit in figures.items():
        per_seed = list(by_unit.values())
        entry: dict[str, Any] = {key: describe([f[key] for f in per_seed], confidence) for key in FIGURES}
        entry["seeds"] = len(per_seed)
        entry["reached"] = sum(f["reached"] for f in per_seed)
        entry["per_seed"] = per_seed
        for role, other in (("vs_baseline", baseline), ("vs_reference", reference)):
            if other is None or other == method or other not in figures:
                continue
            if set(by_unit) != set(figures[other]):
                raise ValueError(f"{method!r} and {other!r} ran different (fold, seed) pairs: "
                                 f"{sorted(by_unit, key=str)} and {sorted(figures[other], key=str)}")
            units = list(by_unit)
            entry[role] = {key: paired_test([by_unit[u][key] for u in units], [figures[other][u][key] for u in units])
                           for key in PAIRED}
        out[method] = entry
    return out
