"""The pure core of ``fedaux-train``: config in, results out."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from callbacks import CommunicationTracker, EnergyTracker, MetricsWriter, RoundProgressBar, RoundTimer, WandbLogger
from callbacks.checkpoint import Checkpointer, load_checkpoint, restore
from fedaux.config import ConfigError, load_config_text
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
    """Communication and time first (they feed the record), then the writers, the checkpoint last."""
    log = cfg.logging
    callbacks: list[RoundCallback] = [CommunicationTracker(), RoundTimer(), EnergyTracker(enabled=log.energy)]
    callbacks.append(MetricsWriter(run_dir, main_task=cfg.model.main_task, plots=log.plots))
    if log.wandb.mode != "disabled":
        callbacks.append(WandbLogger(run_dir, OmegaConf.to_container(cfg, resolve=True), project=log.wandb.project,
                                     mode=log.wandb.mode, name=log.wandb.name or run_dir.name,
                                     entity=log.wandb.entity, tags=list(log.wandb.tags)))
    if log.progress:
        callbacks.append(RoundProgressBar(cfg.model.main_task))
    callbacks.append(Checkpointer(run_dir, OmegaConf.to_yaml(cfg, resolve=True)))
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
        client_timeout_s=fed.client_timeout_s, min_clients=fed.min_clients, update_norm_bound=fed.update_norm_bound,
        aggregation=fed.aggregation, trim_fraction=fed.trim_fraction,
    )


# Keys that may change between a run and its resumption: where output goes, how it is logged,
# and how many rounds to run in all (a run may be extended).
RESUMABLE_CHANGES = ("output_dir", "logging", "federated.rounds")


def config_differences(saved: DictConfig, current: DictConfig) -> list[str]:
    """``key: saved -> current`` for every leaf that differs, except :data:`RESUMABLE_CHANGES`."""
    a = OmegaConf.to_container(saved, resolve=True)
    b = OmegaConf.to_container(current, resolve=True)
    out: list[str] = []

    def walk(x: Any, y: Any, key: str) -> None:
        if any(key == k or key.startswith(k + ".") for k in RESUMABLE_CHANGES):
            return
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{key}.{k}" if key else str(k))
        elif x != y:
            out.append(f"{key}: {x!r} in the checkpoint, {y!r} now")

    walk(a, b, "")
    return out


def run(cfg: DictConfig, data: FederatedData | None = None, drive=None, resume: str | Path | None = None) -> RunResult:
    """Run one federated experiment and write its run folder; see ``README.md`` for the files.

    ``drive`` runs the rounds (see :meth:`FederatedOrchestrator.run`); by default the engine named
    by ``federated.engine`` does: the in-process loop, or Flower's simulation engine. ``resume``
    names a run folder whose checkpoint to continue from; its config must match ``cfg`` except for
    :data:`RESUMABLE_CHANGES`.
    """
    payload = None
    if resume is not None:
        run_dir = Path(resume)
        payload = load_checkpoint(run_dir)
        differences = config_differences(load_config_text(payload["config"], f"{run_dir}/checkpoint.pt"), cfg)
        if differences:
            raise ConfigError(f"{run_dir}: the checkpoint was made with another config: " + "; ".join(differences))
        _truncate_metrics(run_dir / "metrics.jsonl", int(payload["round"]))
    else:
        run_dir = new_run_dir(cfg)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    orchestrator = build_orchestrator(cfg, data, callbacks=default_callbacks(cfg, run_dir))
    if payload is not None:
        restore(orchestrator, payload)
    if drive is None and cfg.federated.engine == "flower":
        from fedaux.federated.flower_engine import run_simulation

        summary = run_simulation(orchestrator, cfg)
    else:
        summary = orchestrator.run(drive)
    summary["run_dir"] = str(run_dir)
    summary["dropped_flows"] = len(orchestrator.data.dropped_flows)
    summary["skipped_files"] = len(orchestrator.data.skipped_files)
    return RunResult(run_dir, orchestrator.history, summary, orchestrator)


def _truncate_metrics(path: Path, rounds: int) -> None:
    """Keep the first ``rounds`` lines: a run killed after logging a round but before checkpointing it
    reruns that round, and must not log it twice."""
    if path.is_file():
        lines = path.read_text().splitlines(keepends=True)[:rounds]
        path.write_text("".join(lines))
