"""The pure core of ``fedaux-train``: config in, results out."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from callbacks import CommunicationTracker, EnergyTracker, MetricsWriter, RoundProgressBar, RoundTimer, WandbLogger
from fedaux.data.samples import FederatedData, build_federated_data
from fedaux.federated.hooks import RoundCallback
from fedaux.federated.orchestrator import FederatedOrchestrator
from fedaux.model import build_model


@dataclass
class RunResult:
    """What a run produced: its folder, the per-round records and the summary."""

    run_dir: Path
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    orchestrator: FederatedOrchestrator


def new_run_dir(cfg: DictConfig) -> Path:
    """``<output_dir>/<name>-s<seed>-<timestamp>``, made unique if two runs start in one second."""
    base = Path(cfg.output_dir) / f"{cfg.name}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir, n = base, 1
    while run_dir.exists():
        run_dir, n = base.with_name(f"{base.name}-{n}"), n + 1
    run_dir.mkdir(parents=True)
    return run_dir


def default_callbacks(cfg: DictConfig, run_dir: Path) -> list[RoundCallback]:
    """Communication and time first (they feed the record), then the writers."""
    log = cfg.logging
    callbacks: list[RoundCallback] = [CommunicationTracker(), RoundTimer(), EnergyTracker(enabled=log.energy)]
    callbacks.append(MetricsWriter(run_dir, main_task=cfg.model.main_task, plots=log.plots))
    if log.wandb.mode != "disabled":
        callbacks.append(WandbLogger(run_dir, OmegaConf.to_container(cfg, resolve=True), project=log.wandb.project,
                                     mode=log.wandb.mode, name=log.wandb.name or run_dir.name,
                                     entity=log.wandb.entity, tags=list(log.wandb.tags)))
    if log.progress:
        callbacks.append(RoundProgressBar(cfg.model.main_task))
    return callbacks


def build_orchestrator(cfg: DictConfig, data: FederatedData | None = None,
                       callbacks: list[RoundCallback] | None = None) -> FederatedOrchestrator:
    """Data, model and orchestrator for ``cfg``; seeds everything first so runs repeat exactly."""
    L.seed_everything(cfg.seed, verbose=False)
    fed = cfg.federated
    if data is None:
        data = build_federated_data(cfg.data, fed.base_stations, fed.edge_servers, cfg.seed,
                                    main_target=cfg.model.heads[cfg.model.main_task].target)
    model = build_model(cfg.model, data.targets, cfg.data.packets, len(cfg.data.features))
    return FederatedOrchestrator(
        model, data, rounds=fed.rounds, local_epochs=fed.local_epochs, batch_size=fed.batch_size,
        fraction=fed.fraction, seed=cfg.seed, target_accuracy=cfg.target_accuracy,
        gradient_clip_val=fed.gradient_clip_val, eval_batch_size=fed.eval_batch_size, callbacks=callbacks or [],
    )


def run(cfg: DictConfig, data: FederatedData | None = None, drive=None) -> RunResult:
    """Run one federated experiment and write its run folder; see ``README.md`` for the files.

    ``drive`` runs the rounds (see :meth:`FederatedOrchestrator.run`); by default the engine named
    by ``federated.engine`` does: the in-process loop, or Flower's simulation engine.
    """
    run_dir = new_run_dir(cfg)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    orchestrator = build_orchestrator(cfg, data, callbacks=default_callbacks(cfg, run_dir))
    if drive is None and cfg.federated.engine == "flower":
        from fedaux.federated.flower_engine import run_simulation

        summary = run_simulation(orchestrator, cfg)
    else:
        summary = orchestrator.run(drive)
    summary["run_dir"] = str(run_dir)
    summary["dropped_flows"] = len(orchestrator.data.dropped_flows)
    summary["skipped_files"] = len(orchestrator.data.skipped_files)
    return RunResult(run_dir, orchestrator.history, summary, orchestrator)
