"""The benchmark's unknown-traffic board: leave one service out, score its flows as unknown.

For every data set of ``unknown.data_sets`` and every main-task class of its data, one run per seed
with ``data.exclude_classes=[that class]``: the class never reaches a base station, and its flows
join the held-out flows as unknown traffic. Per unknown score (``fedaux/unknown.py``) a run reports
the AUROC of its known held-out flows against the unknown ones, and the share of unknown flows
rejected at the threshold that keeps 95% of the known ones (``summary["unknown_detection"]``). The
board shows them per left-out class (mean over seeds) and their mean over classes.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from fedaux.bench.config import split_method
from fedaux.bench.runs import RunSpec
from fedaux.bench.stats import describe

Row = tuple[str, str, Any]

SECTION = "unknown"


@functools.cache
def _class_names(config: str, overrides: tuple[str, ...]) -> tuple[str, ...]:
    """The main-task classes of a config's data, in label order (loads the flows once)."""
    from fedaux.config import load_config
    from fedaux.data.sources import load_flows

    cfg = load_config(config, list(overrides))
    return tuple(load_flows(cfg.data.root, cfg.data)[0].class_names)


def unknown_specs(bench: DictConfig, conf_dir: Path) -> dict[Row, list[RunSpec]]:
    """``("unknown", data set, left-out class)`` -> one spec per seed of the board."""
    board = bench.unknown
    rows: dict[Row, list[RunSpec]] = {}
    for data_set, spec in board.data_sets.items():
        path, overrides = split_method(spec, conf_dir, f"unknown.data_sets.{data_set}")
        base = (*bench.overrides, *board.overrides, *overrides)
        classes = list(board.classes.get(data_set) or []) or list(_class_names(str(path), base))
        for name in classes:
            extra = (*base, f"data.exclude_classes=[{name}]")
            rows[(SECTION, data_set, name)] = [RunSpec(str(path), extra, int(s)) for s in board.seeds or bench.seeds]
    return rows


def unknown_board(bench: DictConfig, rows: dict[Row, list[RunSpec]], results_by_spec: dict[RunSpec, dict],
                  confidence: float = 0.95) -> dict[str, Any]:
    """Per data set: per left-out class and score, the AUROC and the share rejected at 95% known
    (described over seeds) with the known flows' window accuracy; then the mean over classes."""
    board = bench.unknown
    out: dict[str, Any] = {"config": {"title": board.title, "about": board.about,
                                      "data_sets": dict(board.data_sets)},
                           "seeds": list(board.seeds or bench.seeds), "data_sets": {}}
    for (section, data_set, left_out), specs in rows.items():
        if section != SECTION:
            continue
        runs = [results_by_spec[s] for s in specs]
        entry = out["data_sets"].setdefault(data_set, {"classes": {}, "rounds": runs[0]["summary"]["rounds"]})
        scores = sorted({score for r in runs for score in r["summary"].get("unknown_detection", {})})
        entry["classes"][left_out] = {
            "known_accuracy": describe([r["summary"]["final_accuracy"] for r in runs], confidence),
            "scores": {score: {
                "auroc": describe([r["summary"]["unknown_detection"].get(score, {}).get("auroc") for r in runs],
                                  confidence),
                "rejected_at_95_known": describe([r["summary"]["unknown_detection"].get(score, {})
                                                  .get("rejected_at_95_known") for r in runs], confidence),
            } for score in scores},
        }
    for entry in out["data_sets"].values():
        classes = entry["classes"].values()
        scores = sorted({s for c in classes for s in c["scores"]})
        entry["mean"] = {}
        for score in scores:
            aurocs = [c["scores"][score]["auroc"]["mean"] for c in classes if score in c["scores"]]
            rejected = [c["scores"][score]["rejected_at_95_known"]["mean"] for c in classes if score in c["scores"]]
            aurocs = [a for a in aurocs if a is not None]
            rejected = [r for r in rejected if r is not None]
            entry["mean"][score] = {
                "auroc": float(np.mean(aurocs)) if aurocs else None,
                "min_auroc": float(np.min(aurocs)) if aurocs else None,
                "rejected_at_95_known": float(np.mean(rejected)) if rejected else None,
                "classes": len(aurocs),
            }
    return out


def render_unknown(result: dict[str, Any], page_machine: str | None = None) -> list[str]:
    """The board's section of ``docs/results.md``: one table per data set."""
    spec = result["config"]
    measured = (f"Measured on {result['machine']} (an earlier invocation). "
                if result.get("machine") and result["machine"] != page_machine else "")
    lines = [f"## {spec['title'] or 'Unknown traffic'}", "", spec["about"] or "", "",
             f"{measured}Seeds {result['seeds']}; rows: " + "; ".join(f"`{n}`: `{d}`" for n, d in spec["data_sets"].items())
             + ". Each cell: AUROC of known against unknown flows / share of unknown flows rejected at the "
             "threshold that keeps 95% of the known held-out flows (mean over seeds).", ""]

    def cell(auroc: float | None, rejected: float | None) -> str:
        return ("-" if auroc is None else f"{auroc:.3f}") + " / " + ("-" if rejected is None else f"{rejected:.0%}")

    for data_set, entry in result["data_sets"].items():
        scores = list(entry["mean"])
        lines += [f"### {data_set} ({entry['rounds']} rounds)", "",
                  "| left out | known window acc | " + " | ".join(scores) + " |", "|---|---|" + "---|" * len(scores)]
        for left_out, c in entry["classes"].items():
            cells = [cell(c["scores"][s]["auroc"]["mean"], c["scores"][s]["rejected_at_95_known"]["mean"])
                     if s in c["scores"] else "-" for s in scores]
            lines.append(f"| {left_out} | {c['known_accuracy']['mean']:.3f} | " + " | ".join(cells) + " |")
        means = [cell(entry["mean"][s]["auroc"], entry["mean"][s]["rejected_at_95_known"]) for s in scores]
        lines += ["| **mean** | | " + " | ".join(f"**{m}**" for m in means) + " |", ""]
    return lines
