"""A progress bar over rounds showing the round, main accuracy and MB sent."""

from __future__ import annotations

from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from typing_extensions import override

from fedaux.federated.hooks import CALLBACKS, RoundCallback


@CALLBACKS.register("progress")
class RoundProgressBar(RoundCallback):
    """rich progress bar: ``round 7/30  acc 0.812  12.3 MB``; in a run that pre-trains, the phase
    and its round in that phase: ``round 7/30  finetune 2  acc 0.812  12.3 MB``."""

    def __init__(self, main_task: str = "traffic_class") -> None:
        self.main_task = main_task
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    @classmethod
    def from_config(cls, cfg, run_dir) -> RoundProgressBar | None:
        return cls(cfg.model.main_task) if cfg.logging.progress else None

    @override
    def on_run_start(self, orchestrator) -> None:
        self._progress = Progress(
            TextColumn("round"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task("rounds", total=orchestrator.rounds,
                                             completed=orchestrator.completed_rounds, status="")

    @override
    def on_round_end(self, orchestrator, rnd: int, record: dict[str, Any]) -> None:
        if self._progress is None or self._task is None:
            return
        acc = record.get(orchestrator.strategy.headline_key(self.main_task), float("nan"))
        mb = record.get("comm/cum_bytes_total", 0) / 1e6
        phase = f"{record['phase']} {record['phase/round']}  " if "phase" in record else ""  # fedaux.callbacks.phase
        self._progress.update(self._task, completed=rnd, status=f"{phase}acc {acc:.3f}  {mb:,.1f} MB")

    @override
    def on_run_teardown(self, orchestrator, failed: bool) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
