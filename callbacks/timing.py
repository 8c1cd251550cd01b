"""Wall time per round, per client fit, and cumulative compute time."""

from __future__ import annotations

import time
from typing import Any

from typing_extensions import override

from fedaux.federated.hooks import CALLBACKS, KeepsTotals, RoundCallback, at_target


@CALLBACKS.register("timer")
class RoundTimer(KeepsTotals, RoundCallback):
    """Times rounds (round hooks) and each client's local fit.

    Adds ``time/round_s`` (wall time of the round, training to evaluation), ``time/compute_s``
    (sum of the clients' fit times as each client measured it: the compute a round costs however
    clients are spread over machines), ``time/client_fit_max_s`` (the slowest client: a round's
    critical path when clients train in parallel), ``time/eval_s``, and cumulative
    ``time/total_s`` and ``time/compute_total_s``, and ``time/train_loop_s``, the part of the fits
    spent inside Lightning's training loop (the rest is Trainer set-up and teardown; each fit
    measures it, so it is there whichever engine or worker ran the fit). To the summary it adds
    ``total_time_s``, ``time_s_to_target``, ``total_compute_s`` and ``compute_s_to_target``.
    """

    reads_update_state = False  # fit times only: the workers may fold the updates themselves

    def __init__(self, clock=time.perf_counter) -> None:
        self._clock = clock
        self._round_start = self._eval_start = 0.0
        self._fits: list[float] = []
        self._loops: list[float] = []
        self._eval_s = 0.0
        self._totals = {"wall": 0.0, "compute": 0.0}

    @override
    def on_round_start(self, orchestrator, rnd: int, clients: list[int]) -> None:
        self._round_start = self._clock()
        self._fits, self._loops = [], []

    @override
    def on_client_done(self, orchestrator, rnd: int, update) -> None:
        self._fits.append(update.fit_seconds)
        self._loops.append(update.loop_seconds)

    @override
    def on_aggregated(self, orchestrator, rnd: int, aggregate) -> None:
        self._eval_start = self._clock()

    @override
    def on_evaluated(self, orchestrator, rnd: int, metrics: dict[str, float]) -> None:
        self._eval_s = self._clock() - self._eval_start

    @override
    def log_round(self, orchestrator, rnd: int, record: dict[str, Any]) -> None:
        round_s = self._clock() - self._round_start
        compute = sum(self._fits)
        self._totals["wall"] += round_s
        self._totals["compute"] += compute
        record.update({
            "time/round_s": round_s,
            "time/compute_s": compute,
            "time/client_fit_max_s": max(self._fits, default=0.0),
            "time/eval_s": self._eval_s,
            "time/train_loop_s": sum(self._loops),
            "time/total_s": self._totals["wall"],
            "time/compute_total_s": self._totals["compute"],
        })

    @override
    def add_to_summary(self, orchestrator, summary: dict[str, Any]) -> None:
        summary["total_time_s"] = self._totals["wall"]
        summary["time_s_to_target"] = at_target(orchestrator, summary, "time/total_s")
        summary["total_compute_s"] = self._totals["compute"]
        summary["compute_s_to_target"] = at_target(orchestrator, summary, "time/compute_total_s")
