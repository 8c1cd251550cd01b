"""Bytes sent each way, per tier, per round and cumulative."""

from __future__ import annotations

from typing import Any

from typing_extensions import override

from fedaux.federated.hooks import CALLBACKS, KeepsTotals, RoundAggregate, RoundCallback, at_target


@CALLBACKS.register("communication")
class CommunicationTracker(KeepsTotals, RoundCallback):
    """Counts the exact bytes of the state dicts sent down to and up from every client.

    Per round it adds ``comm/bytes_down``, ``comm/bytes_up``, ``comm/bytes_total`` and the same per
    tier (``comm/bytes_up/base_station-edge``, ``comm/bytes_up/edge-top``, ...), and cumulative
    ``comm/cum_bytes_down|up|total``; to the summary ``total_MB`` and ``MB_to_target``. Sizes are the tensors' data bytes, as
    :func:`fedaux.federated.aggregation.state_nbytes` counts them.
    """

    def __init__(self) -> None:
        self._round: dict[str, int] = {}
        self._totals = {"down": 0, "up": 0}

    @override
    def on_aggregated(self, orchestrator, rnd: int, aggregate: RoundAggregate) -> None:
        self._round = {f"comm/bytes_down/{tier}": n for tier, n in aggregate.bytes_down.items()}
        self._round.update({f"comm/bytes_up/{tier}": n for tier, n in aggregate.bytes_up.items()})
        self._round["comm/bytes_down"] = sum(aggregate.bytes_down.values())
        self._round["comm/bytes_up"] = sum(aggregate.bytes_up.values())
        self._totals["down"] += self._round["comm/bytes_down"]
        self._totals["up"] += self._round["comm/bytes_up"]

    @override
    def log_round(self, orchestrator, rnd: int, record: dict[str, Any]) -> None:
        record.update(self._round)
        record["comm/bytes_total"] = self._round["comm/bytes_down"] + self._round["comm/bytes_up"]
        record["comm/cum_bytes_down"] = self._totals["down"]
        record["comm/cum_bytes_up"] = self._totals["up"]
        record["comm/cum_bytes_total"] = self._totals["down"] + self._totals["up"]

    @override
    def add_to_summary(self, orchestrator, summary: dict[str, Any]) -> None:
        reached = at_target(orchestrator, summary, "comm/cum_bytes_total")
        summary["total_MB"] = (self._totals["down"] + self._totals["up"]) * 1e-6
        summary["MB_to_target"] = None if reached is None else reached * 1e-6
