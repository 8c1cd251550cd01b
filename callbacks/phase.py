"""Which phase each round is in, when a run pre-trains (``federated.pretrain_rounds > 0``)."""

from __future__ import annotations

from typing import Any

from typing_extensions import override

from fedaux.federated.hooks import CALLBACKS, RoundCallback
from fedaux.federated.phases import phase_round, round_phase


@CALLBACKS.register("phase")
class PhaseLogger(RoundCallback):
    """Adds ``phase`` (``"pretrain"`` or ``"finetune"``) and ``phase/round`` (the round's number
    within its phase) to every round record, so ``metrics.jsonl``, W&B and the progress bar say
    which phase a round is in, and ``pretrain_rounds`` to the summary. Runs without pre-training
    do not build it, so their records stay as they were.
    """

    def __init__(self, pretrain_rounds: int) -> None:
        if pretrain_rounds < 1:
            raise ValueError(f"pretrain_rounds={pretrain_rounds}: a phase logger is for runs that pre-train")
        self.pretrain_rounds = pretrain_rounds

    @classmethod
    def from_config(cls, cfg, run_dir) -> PhaseLogger | None:
        rounds = int(cfg.federated.pretrain_rounds)
        return cls(rounds) if rounds > 0 else None

    @override
    def log_round(self, orchestrator, rnd: int, record: dict[str, Any]) -> None:
        record["phase"] = round_phase(rnd, self.pretrain_rounds)
        record["phase/round"] = phase_round(rnd, self.pretrain_rounds)

    @override
    def add_to_summary(self, orchestrator, summary: dict[str, Any]) -> None:
        summary["pretrain_rounds"] = self.pretrain_rounds
