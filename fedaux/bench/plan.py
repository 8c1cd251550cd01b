"""Which runs a benchmark section needs: (section, row, value) -> RunSpec per seed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from fedaux.bench.config import split_method
from fedaux.bench.runs import RunSpec

Row = tuple[str, str, Any]  # (section, method row, sweep value or None)


def board_specs(bench: DictConfig, conf_dir: Path, section: str, board: DictConfig,
                extra: Sequence[str] = (), value: Any = None, methods: list[str] | None = None,
                seeds: list[int] | None = None) -> dict[Row, list[RunSpec]]:
    """One spec per seed for every method row of ``board`` (or just ``methods``)."""
    out: dict[Row, list[RunSpec]] = {}
    for method in methods or list(board.methods):
        path, overrides = split_method(board.methods[method], conf_dir, f"{section}.methods.{method}")
        all_overrides = (*bench.overrides, *board.overrides, *overrides, *extra)
        out[(section, method, value)] = [RunSpec(str(path), tuple(all_overrides), int(s))
                                        for s in (seeds or board.seeds or bench.seeds)]
    return out


def plan(bench: DictConfig, conf_dir: Path, parts: set[str]) -> dict[Row, list[RunSpec]]:
    """Every run the chosen sections need, seed-major within a row."""
    rows: dict[Row, list[RunSpec]] = {}
    for name, board in bench.leaderboards.items():
        if name in parts:
            rows.update(board_specs(bench, conf_dir, name, board))
    if "ablation" in parts and bench.ablation is not None:
        rows.update(board_specs(bench, conf_dir, "ablation", bench.ablation))
    if "sensitivity" in parts and bench.sensitivity:
        board = bench.leaderboards[bench.sensitivity_board]
        for axis, spec in bench.sensitivity.items():
            for value in spec["values"]:
                rows.update(board_specs(bench, conf_dir, f"sensitivity:{axis}", board, [f"{spec.key}={value}"], value,
                                        list(spec.methods or bench.sensitivity_methods), list(bench.sensitivity_seeds)))
    return rows
