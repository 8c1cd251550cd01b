"""Scoring a trained run on labelled flows: window- and flow-level metrics of every head, per-class
precision/recall/F1 (torchmetrics), a confusion matrix, the coverage/accuracy trade-off of
calling low-confidence flows ``unknown``, and how well each unknown score (:mod:`fedaux.unknown`)
tells the flows of known classes from those of classes the model never saw."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from fedaux.inference import Predictor, TrainedRun
from fedaux.model.module import flow_means
from fedaux.unknown import UnknownScoring, detection_report

THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


def _scores(pred: torch.Tensor, target: torch.Tensor, classes: int) -> dict[str, float]:
    if len(target) == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "count": 0}
    return {
        "accuracy": float(MulticlassAccuracy(classes, average="micro")(pred, target)),
        "macro_f1": float(MulticlassF1Score(classes, average="macro")(pred, target)),
        "count": int(len(target)),
    }


def coverage_curve(confidence: np.ndarray, correct: np.ndarray, thresholds=THRESHOLDS) -> list[dict[str, float]]:
    """For each threshold P: the share of flows with main-task probability >= P (coverage) and the
    accuracy on them. Flows below P would be labelled ``unknown``."""
    rows = []
    for p in thresholds:
        kept = confidence >= p
        rows.append({"min_confidence": p, "coverage": float(kept.mean()) if len(kept) else float("nan"),
                     "accuracy": float(correct[kept].mean()) if kept.any() else float("nan")})
    return rows


def evaluate(run: TrainedRun, x: np.ndarray, flow_index: np.ndarray, flow_labels: dict[str, np.ndarray],
             predictor: Predictor | None = None, unknown_flows: dict[str, int] | None = None,
             scoring: UnknownScoring | None = None) -> dict[str, Any]:
    """Metrics of every classification head at window and flow level, and ``unknown_detection``:
    per unknown score, how it separates known flows from unknown ones (:func:`unknown_detection`).

    Args:
        x: ``(N, C, packets)`` windows; ``flow_index`` ``(N,)`` their flow (0..F-1).
        flow_labels: per task, ``(F,)`` class index in the model's classes, or negative where the
            flow's class is one the model does not know (left out of the scores, counted apart:
            the unknown flows).
        predictor: what scores the windows (default: the run's model, with logits and features).
        unknown_flows: class name -> number of flows whose class the model does not know.
        scoring: the unknown scores' statistics and suggested thresholds (default: the run's).
    """
    probs = (predictor or run.predictor(extras=True))(x)
    num_flows = int(flow_index.max()) + 1 if len(flow_index) else 0
    report: dict[str, Any] = {"windows": int(len(x)), "flows": num_flows, "heads": {},
                              "unknown_classes": dict(unknown_flows or {})}
    for task in run.tasks:
        if run.model.tasks[task].kind != "classification" or task not in flow_labels:
            continue
        names = run.class_names(task)
        classes = len(names)
        window_probs = torch.as_tensor(probs[task])
        flow_label = torch.as_tensor(flow_labels[task])
        window_label = flow_label[torch.as_tensor(flow_index)]
        known_w = window_label >= 0
        flow_probs = flow_means(window_probs, flow_index, num_flows)
        known_f = flow_label >= 0
        flow_pred = flow_probs.argmax(dim=1)
        head: dict[str, Any] = {
            "window": _scores(window_probs.argmax(dim=1)[known_w], window_label[known_w], classes),
            "flow": _scores(flow_pred[known_f], flow_label[known_f], classes),
        }
        if known_f.any():
            args = (flow_pred[known_f], flow_label[known_f])
            precision = MulticlassPrecision(classes, average=None, zero_division=0)(*args).tolist()
            recall = MulticlassRecall(classes, average=None, zero_division=0)(*args).tolist()
            f1 = MulticlassF1Score(classes, average=None, zero_division=0)(*args).tolist()
            support = torch.bincount(flow_label[known_f], minlength=classes).tolist()
            head["per_class_flow"] = {name: {"precision": precision[k], "recall": recall[k], "f1": f1[k],
                                             "support": support[k]} for k, name in enumerate(names)}
            head["confusion_flow"] = MulticlassConfusionMatrix(classes)(*args).tolist()
        if task == run.model.main_task:
            confidence = flow_probs.max(dim=1).values.numpy()
            correct = (flow_pred == flow_label).numpy()
            head["coverage"] = coverage_curve(confidence[known_f.numpy()], correct[known_f.numpy()])
            if unknown_flows:
                # Where the flows of classes the model never saw would land, and how sure it was.
                head["unknown_confidence_mean"] = float(confidence[~known_f.numpy()].mean())
        report["heads"][task] = head
    main = run.model.main_task
    if main in flow_labels:
        report["unknown_detection"] = unknown_detection(scoring or run.unknown_scoring(), probs, flow_index,
                                                        torch.as_tensor(flow_labels[main]) < 0)
    return report


def unknown_detection(scoring: UnknownScoring, outputs: dict[str, np.ndarray], flow_index: np.ndarray,
                      is_unknown: torch.Tensor) -> dict[str, Any]:
    """Every unknown score the outputs allow, on flows ``is_unknown`` ``(F,)`` against the others:
    AUROC, the share of unknown flows rejected at the threshold keeping 95% of these known flows,
    and at the run's suggested threshold (:func:`fedaux.unknown.detection_report`)."""
    num_flows = len(is_unknown)
    out: dict[str, Any] = {"known_flows": int((~is_unknown).sum()), "unknown_flows": int(is_unknown.sum()),
                           "score": scoring.default, "scores": {}}
    for name in scoring.available(outputs):
        scores = scoring.score(name, outputs, flow_index, num_flows)
        out["scores"][name] = detection_report(scores, is_unknown, (scoring.suggested or {}).get(name))
    return out


def plot_confusion(matrix: list[list[int]], names: list[str], path: Path, title: str) -> None:
    """A confusion matrix PNG with class names (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 1.2 * len(names) + 1.5))
    ax.imshow(values, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > values.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict[str, Any], run: TrainedRun, out_dir: Path) -> list[Path]:
    """``eval.json`` and a ``confusion_<task>.png`` per head into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(report, indent=2))
    written = [out_dir / "eval.json"]
    for task, head in report["heads"].items():
        if "confusion_flow" in head:
            path = out_dir / f"confusion_{task}.png"
            plot_confusion(head["confusion_flow"], run.class_names(task), path, f"{task}: flows")
            written.append(path)
    return written
