"""Statistics over seeds: means with bootstrap intervals and paired tests, through SciPy.

Every method of a seed trains on the same partition, windows and label masks, so two methods'
results pair up seed by seed and a paired test compares them. With 5 seeds the Wilcoxon
signed-rank test cannot go below p = 0.0625 (two-sided, exact), so it never reaches 0.05; the
paired t-test can, but assumes roughly normal differences. Both are reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

# Per-run figures summarised over seeds: summary key -> whether lower is better.
FIGURES = {
    "final_accuracy": False,
    "final_f1": False,
    "rounds_to_target_censored": True,
    "MB_to_target": True,
    "compute_s_to_target": True,
    "total_MB": True,
    "total_compute_s": True,
}


def run_figures(run: dict[str, Any]) -> dict[str, float | None]:
    """The figures of one run; a run that never reached the target counts ``rounds + 1`` rounds
    (a lower bound on its true value) and has no MB or compute to target."""
    summary = run["summary"]
    out = {key: summary.get(key) for key in FIGURES}
    if not summary.get("accuracy_key", "val/").startswith("val/"):
        out["final_f1"] = None  # a personalised method's F1 would be its untrained global heads'; not shown
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


def board_stats(runs: dict[str, list[dict[str, Any]]], baseline: str | None, reference: str | None,
                confidence: float = 0.95) -> dict[str, Any]:
    """Per method: every figure described over seeds, and paired tests against the baseline and
    the reference on final accuracy, final F1 and (censored) rounds to target.

    Args:
        runs: method -> its runs, one per seed, in the same seed order for every method.
    """
    figures = {m: [run_figures(r) for r in rs] for m, rs in runs.items()}
    out: dict[str, Any] = {}
    for method, per_seed in figures.items():
        entry: dict[str, Any] = {key: describe([f[key] for f in per_seed], confidence) for key in FIGURES}
        entry["seeds"] = len(per_seed)
        entry["reached"] = sum(f["reached"] for f in per_seed)
        entry["per_seed"] = per_seed
        for role, other in (("vs_baseline", baseline), ("vs_reference", reference)):
            if other is None or other == method or other not in figures:
                continue
            entry[role] = {key: paired_test([f[key] for f in per_seed], [f[key] for f in figures[other]])
                           for key in ("final_accuracy", "final_f1", "rounds_to_target_censored")}
        out[method] = entry
    return out
