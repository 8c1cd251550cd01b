"""The benchmark's own config (``conf/bench.yaml``): which runs make up each section of the page."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fedaux.errors import ConfigError


@dataclass
class Board:
    """A leaderboard (or the ablation): methods compared on identical data, seed by seed.

    ``methods`` maps a row name to ``"<experiment config> key=value ..."`` (the config file
    relative to the bench config, then overrides); ``overrides`` apply to every row.
    """

    title: str = ""
    about: str = ""  # one paragraph on the setting and why it was chosen
    overrides: list[str] = field(default_factory=list)
    methods: dict[str, str] = field(default_factory=dict)
    baseline: str | None = "fedavg"  # rows tested against it (paired across seeds)
    reference: str | None = "fedauxhmtl"  # and against it
    seeds: list[int] | None = None  # default: the bench's seeds
    folds: int | None = None  # cross-validation folds (data.folds); default: the bench's folds
    columns: list[str] = field(default_factory=list)  # more summary keys shown per row (mean [interval])
    scatter: str | None = None  # a summary key to plot final accuracy against (e.g. privacy_epsilon)


@dataclass
class SweepAxis:
    key: str = "???"  # an experiment config key
    values: list[Any] = field(default_factory=list)
    methods: list[str] | None = None  # rows of the sensitivity board; default: sensitivity_methods


@dataclass
class UnknownBoardConfig:
    """Leave-one-service-out unknown-traffic detection (:mod:`fedaux.bench.unknown`)."""

    title: str = ""
    about: str = ""
    overrides: list[str] = field(default_factory=list)
    data_sets: dict[str, str] = field(default_factory=dict)  # name -> "<experiment config> key=value ..."
    classes: dict[str, list[str]] = field(default_factory=dict)  # classes to leave out; default: every class
    seeds: list[int] | None = None  # default: the bench's seeds


@dataclass
class BenchConfig:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    # k >= 2: every board row runs each (fold, seed) pair, fold i the test set (data.folds=k data.fold=i),
    # and methods pair up by (fold, seed); 0 or 1: the configs' own test split, seed by seed.
    folds: int = 0
    jobs: int = 2  # runs at once, each in its own process with cores // jobs torch threads
    cache: str = "outputs/bench/runs"  # one JSON per finished run: a killed benchmark resumes there
    overrides: list[str] = field(default_factory=list)  # applied to every run
    output: str = "docs"  # results.md goes here, plots and JSON under <output>/results/
    energy: bool = False
    confidence: float = 0.95  # of the bootstrap intervals
    alpha: float = 0.05  # significance level of the paired tests
    # What a plain ``fedaux-bench`` recomputes; the others are kept from the last results.json
    # until ``--only`` names them. None: every section.
    default_sections: list[str] | None = None
    leaderboards: dict[str, Board] = field(default_factory=dict)
    ablation: Board | None = None
    unknown: UnknownBoardConfig | None = None
    sensitivity_board: str = "quic"  # the leaderboard whose method rows the sensitivity sweeps use
    sensitivity_methods: list[str] = field(default_factory=lambda: ["fedauxhmtl", "fedavg"])
    sensitivity_seeds: list[int] = field(default_factory=lambda: [0])
    sensitivity: dict[str, SweepAxis] = field(default_factory=dict)
    scale_board: str = "quic"
    scale_method: str = "fedauxhmtl"
    scale_base_stations: list[int] = field(default_factory=list)
    scale_rounds: int = 2
    scale_replicate_flows: int = 2  # copies of every flow, so 200 base stations each get whole flows
    scale_overrides: list[str] = field(default_factory=list)  # applied to every scale point (e.g. fewer windows per flow)
    scale_engines: list[str] = field(default_factory=lambda: ["inprocess"])  # federated.engine of each point
    scale_flower_max: int | None = None  # Flower points only up to this many base stations (None: all)


def sections(bench: DictConfig) -> list[str]:
    """Every section ``--only`` may name: each leaderboard, then ablation, unknown, sensitivity, scale."""
    return [*bench.leaderboards, "ablation", "unknown", "sensitivity", "scale"]


def board_folds(bench: DictConfig, board: DictConfig) -> int:
    """The number of cross-validation folds a board runs (its own ``folds``, else the bench's)."""
    return int(bench.folds if board.folds is None else board.folds)


def split_method(spec: str, conf_dir: Path, where: str) -> tuple[Path, list[str]]:
    """``"quic.yaml federated.strategy=fedprox"`` -> (config path, overrides)."""
    parts = shlex.split(spec)
    if not parts or "=" in parts[0]:
        raise ConfigError(f"{where}: {spec!r} must start with an experiment config file, e.g. 'quic.yaml key=value'")
    path = conf_dir / parts[0]
    if not path.is_file():
        raise ConfigError(f"{where}: config file {path} not found")
    bad = [p for p in parts[1:] if "=" not in p]
    if bad:
        raise ConfigError(f"{where}: {bad[0]!r} is not of the form key=value")
    return path, parts[1:]


def load_bench_config(path: str | Path, overrides: Sequence[str] = ()) -> tuple[DictConfig, Path]:
    """The bench config with ``key=value`` overrides; checks every method reference.

    Raises:
        ConfigError: naming the file, the key and what would be valid.
    """
    path = Path(path)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(BenchConfig), OmegaConf.load(path),
                              OmegaConf.from_dotlist([o.removeprefix("--") for o in overrides]))
    except Exception as err:
        raise ConfigError(f"{path}: {err}".splitlines()[0]) from None
    if not isinstance(cfg, DictConfig):  # merged onto the structured BenchConfig: always a mapping
        raise ConfigError(f"{path}: a bench config must be a mapping, got {type(cfg).__name__}")
    conf_dir = path.parent
    boards = dict(cfg.leaderboards)
    if cfg.ablation is not None:
        boards["ablation"] = cfg.ablation
    for name, board in boards.items():
        folds = board_folds(cfg, board)
        if folds < 0:
            raise ConfigError(f"{path}: {name}.folds={folds} must be 0 or 1 (no cross-validation) or >= 2")
        for row, spec in board.methods.items():
            split_method(spec, conf_dir, f"{path}: {name}.methods.{row}")
        for role in ("baseline", "reference"):
            if board[role] is not None and board[role] not in board.methods:
                raise ConfigError(f"{path}: {name}.{role}={board[role]!r} is not one of its methods {list(board.methods)}")
    if cfg.unknown is not None:
        for name, spec in cfg.unknown.data_sets.items():
            split_method(spec, conf_dir, f"{path}: unknown.data_sets.{name}")
        for name in cfg.unknown.classes:
            if name not in cfg.unknown.data_sets:
                raise ConfigError(f"{path}: unknown.classes.{name}: not one of unknown.data_sets {list(cfg.unknown.data_sets)}")
    for name in cfg.default_sections or []:
        if name not in sections(cfg):
            raise ConfigError(f"{path}: default_sections: {name!r} is not a section; choose from {sections(cfg)}")
    if cfg.jobs < 1:
        raise ConfigError(f"{path}: jobs={cfg.jobs} must be >= 1")
    if cfg.sensitivity and cfg.sensitivity_board not in cfg.leaderboards:
        raise ConfigError(f"{path}: sensitivity_board={cfg.sensitivity_board!r} is not a leaderboard: {list(cfg.leaderboards)}")
    for axis, spec in cfg.sensitivity.items():
        for method in spec.methods or cfg.sensitivity_methods:
            if method not in cfg.leaderboards[cfg.sensitivity_board].methods:
                raise ConfigError(f"{path}: sensitivity.{axis}: method {method!r} is not in "
                                  f"leaderboards.{cfg.sensitivity_board}.methods")
    return cfg, conf_dir
