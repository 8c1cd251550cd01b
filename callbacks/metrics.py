"""Per-round metrics and the run folder: metrics.jsonl, summary.json, the final model, plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from typing_extensions import override

from fedaux.federated.hooks import CALLBACKS, RoundCallback


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@CALLBACKS.register("metrics")
class MetricsWriter(RoundCallback):
    """Writes the run folder.

    * ``data.json``: what the model expects of data (class names per target, features, window
      length, the packet-length quantity: frame, ip or payload) and the data's checksum;
    * ``metrics.jsonl``: one JSON object per round, flushed as each round ends, holding every key
      the callbacks added (``round``, ``val/acc/<task>``, ``val/f1/<task>``, ``train/global_loss``,
      ``comm/...``, ``time/...``);
    * ``summary.json``: final and best accuracy, rounds / MB / seconds to the target accuracy, totals,
      flows left out (``dropped_flows``: shorter than ``data.min_packets``; ``skipped_files``);
    * ``model.pt``: the final global state dict (``torch.load(..., weights_only=True)`` reads it);
    * ``accuracy.png``: main accuracy against rounds and against MB sent.
    """

    def __init__(self, run_dir: str | Path, main_task: str = "traffic_class", plots: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.main_task, self.plots = main_task, plots

    @classmethod
    def from_config(cls, cfg, run_dir: Path) -> MetricsWriter:
        return cls(run_dir, main_task=cfg.model.main_task, plots=cfg.logging.plots)

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @override
    def on_run_start(self, orchestrator) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "data.json").write_text(json.dumps(orchestrator.data.describe(), indent=2))

    @override
    def add_to_summary(self, orchestrator, summary: dict[str, Any]) -> None:
        summary["packet_length"] = orchestrator.data.flows.packet_length
        # Flows the data left out: shorter than data.min_packets, and bad files skipped (on_bad_flow: skip).
        summary["dropped_flows"] = len(orchestrator.data.dropped_flows)
        summary["skipped_files"] = len(orchestrator.data.skipped_files)
        last = orchestrator.history[-1] if orchestrator.history else {}
        summary["final_flow_accuracy"] = last.get(f"val/flow_acc/{self.main_task}")
        # fedaux-predict --min-confidence: 95% of the correctly classified held-out flows reach it.
        summary["suggested_min_confidence"] = last.get("val/min_confidence")

    @override
    def on_round_end(self, orchestrator, rnd: int, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")

    @override
    def on_run_end(self, orchestrator, summary: dict[str, Any]) -> None:
        (self.run_dir / "summary.json").write_text(json.dumps({k: _jsonable(v) for k, v in summary.items()}, indent=2))
        torch.save(orchestrator.global_state, self.run_dir / "model.pt")
        if self.plots and orchestrator.history:
            plot_accuracy(orchestrator.history, self.main_task, self.run_dir / "accuracy.png",
                          orchestrator.strategy.headline_key(self.main_task))


def plot_accuracy(history: list[dict[str, Any]], main_task: str, path: Path, key: str | None = None) -> None:
    """Main-task accuracy (``key``, by default ``val/acc/<main_task>``) against rounds and against
    cumulative MB sent, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in history]
    acc = [r[key or f"val/acc/{main_task}"] for r in history]
    mb = [r.get("comm/cum_bytes_total", 0) / 1e6 for r in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    left.plot(rounds, acc, marker=".")
    left.set(xlabel="round", ylabel=f"held-out accuracy ({main_task})", title="accuracy vs rounds")
    right.plot(mb, acc, marker=".")
    right.set(xlabel="MB sent (both ways, both tiers)", title="accuracy vs communication")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
