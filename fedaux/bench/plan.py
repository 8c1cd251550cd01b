"""Which runs a benchmark section needs: (section, row, value) -> RunSpec per (fold, seed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from fedaux.bench.config import board_folds, split_method
from fedaux.bench.runs import RunSpec

Row = tuple[str, str, Any]  # (section, method row, sweep value or None)


def board_specs(bench: DictConfig, conf_dir: Path, section: str, board: DictConfig,
                extra: Sequence[str] = (), value: Any = None, methods: list[str] | None = None,
                seeds: list[int] | None = None, folds: int = 0) -> dict[Row, list[RunSpec]]:
    """One spec per (fold, seed) for every method row of ``board`` (or just ``methods``), fold-major;
    with ``folds`` < 2 one per seed, on the configs' own test split."""
    out: dict[Row, list[RunSpec]] = {}
    fold_list = range(folds) if folds >= 2 else [0]
    for method in methods or list(board.methods):
        path, overrides = split_method(board.methods[method], conf_dir, f"{section}.methods.{method}")
        all_overrides = (*bench.overrides, *board.overrides, *overrides, *extra)
        out[(section, method, value)] = [RunSpec(str(path), tuple(all_overrides), int(s), folds if folds >= 2 else 0,
                                                 fold)
                                        for fold in fold_list for s in (seeds or board.seeds or bench.seeds)]
    return out


def plan(bench: DictConfig, conf_dir: Path, parts: set[str]) -> dict[Row, list[RunSpec]]:
    """Every run the chosen sections need, fold-major then seed within a row. Leaderboards and the
    ablation run their folds (:func:`~fedaux.bench.config.board_folds`); the sensitivity sweeps
    keep the configs' own test split."""
    rows: dict[Row, list[RunSpec]] = {}
    for name, board in bench.leaderboards.items():
        if name in parts:
            rows.update(board_specs(bench, conf_dir, name, board, folds=board_folds(bench, board)))
    if "ablation" in parts and bench.ablation is not None:
        rows.update(board_specs(bench, conf_dir, "ablation", bench.ablation, folds=board_folds(bench, bench.ablation)))
    if "unknown" in parts and bench.unknown is not None:
        from fedaux.bench.unknown import unknown_specs

        rows.update(unknown_specs(bench, conf_dir))
    if "sensitivity" in parts and bench.sensitivity:
        board = bench.leaderboards[bench.sensitivity_board]
        for axis, spec in bench.sensitivity.items():
            for value in spec["values"]:
                rows.update(board_specs(bench, conf_dir, f"sensitivity:{axis}", board, [f"{spec.key}={value}"], value,
                                        list(spec.methods or bench.sensitivity_methods), list(bench.sensitivity_seeds)))
    return rows
