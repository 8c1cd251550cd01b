"""The pure core of ``fedaux-train``: config in, results out."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from fedaux.callbacks.checkpoint import load_checkpoint, restore
from fedaux.config import ConfigError, load_config_text
from fedaux.data.samples import FederatedData, build_federated_data
from fedaux.federated.client import TrainerOptions
from fedaux.federated.compression import Compression
from fedaux.federated.engines import ENGINES, Engine
from fedaux.federated.hooks import RoundCallback, build_callback, configured_callbacks
from fedaux.federated.orchestrator import FederatedOrchestrator, ServerSettings
from fedaux.federated.privacy import ClientLevelDP
from fedaux.federated.runtime import ClientRuntime

# Built-in callbacks every run gets (those disabled by config build to None), in this order:
# communication, time and phase first (they feed the record), then the writers. The checkpoint comes
# last, after the engine's and the user's callbacks, so it saves their state for the round too.
DEFAULT_CALLBACKS = ("communication", "timer", "energy", "phase", "unknown", "metrics", "wandb", "progress")


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
    """The built-in callbacks of :data:`DEFAULT_CALLBACKS` that ``cfg`` enables."""
    import fedaux.callbacks  # noqa: F401  (registers the built-in callbacks)

    built = [build_callback(name, cfg, run_dir, key="built-in callback") for name in DEFAULT_CALLBACKS]
    return [callback for callback in built if callback is not None]


def run_callbacks(cfg: DictConfig, run_dir: Path, engine: Engine, extra: Sequence[RoundCallback] = ()) -> list[RoundCallback]:
    """Defaults, the engine's, ``logging.callbacks`` from config, ``extra`` from the caller, checkpoint last."""
    import fedaux.callbacks  # noqa: F401

    checkpoint = build_callback("checkpoint", cfg, run_dir)
    if checkpoint is None:  # every run saves its rounds: resuming depends on it
        raise ConfigError("the 'checkpoint' callback built nothing; a run needs its checkpointer")
    return [*default_callbacks(cfg, run_dir), *engine.callbacks(), *configured_callbacks(cfg, run_dir), *extra, checkpoint]


def build_orchestrator(cfg: DictConfig, data: FederatedData | None = None, callbacks: Sequence[RoundCallback] = (),
                       engine: Engine | None = None) -> FederatedOrchestrator:
    """Data, the client runtime and the server for ``cfg``; seeds everything first so runs repeat exactly.

    Args:
        data: prebuilt data (benchmarks share one across methods); built from ``cfg.data`` if None.
        callbacks: round hooks; those that are Lightning callbacks run in every base station's fit.
        engine: what runs the fits; by default the ``federated.engine`` entry of
            :data:`~fedaux.federated.engines.ENGINES`.
    """
    TrainerOptions.from_config(cfg.trainer).check()
    L.seed_everything(cfg.seed, verbose=False)
    fed = cfg.federated
    if data is None:
        data = build_federated_data(cfg.data, fed.base_stations, fed.edge_servers, cfg.seed,
                                    main_target=cfg.model.heads[cfg.model.main_task].target)
    lightning = [c for c in callbacks if isinstance(c, L.Callback)]
    runtime = ClientRuntime.from_config(cfg, data.target_classes, callbacks=lightning, test=data.test)
    return FederatedOrchestrator(
        runtime, data, ServerSettings.from_config(cfg), callbacks=callbacks,
        compression=Compression.from_config(fed.compression, runtime.model), privacy=ClientLevelDP.from_config(cfg.privacy),
        engine=engine or ENGINES.get(fed.engine)(cfg),
    )


# Keys that may change between a run and its resumption: where output goes, how it is logged,
# how many rounds to run in all (a run may be extended) and how many processes fit them.
RESUMABLE_CHANGES = ("output_dir", "logging", "federated.rounds", "federated.workers", "federated.fit_loop",
                     "federated.fold_in_workers")


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


def run(cfg: DictConfig, *, data: FederatedData | None = None, callbacks: Sequence[RoundCallback] = (),
        resume: str | Path | None = None, engine: Engine | None = None) -> RunResult:
    """Run one federated experiment and write its run folder; see ``README.md`` for the files.

    Args:
        data: prebuilt data (benchmarks share one across methods); built from ``cfg.data`` if None.
        callbacks: round callbacks to add to the built-in ones and ``logging.callbacks``.
        resume: a run folder whose checkpoint to continue from; its config must match ``cfg``
            except for :data:`RESUMABLE_CHANGES`.
        engine: what drives the rounds; by default the :data:`~fedaux.federated.engines.ENGINES`
            entry named by ``federated.engine``. The Flower deployment passes its grid's engine.
    """
    payload = None
    if resume is not None:
        run_dir = Path(resume)
        payload = load_checkpoint(run_dir)
        differences = config_differences(load_config_text(payload["config"], f"{run_dir}/checkpoint.pt"), cfg)
        if differences:
            raise ConfigError(f"{run_dir}: the checkpoint was made with another config: " + "; ".join(differences))
    else:
        run_dir = new_run_dir(cfg)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    engine = engine or ENGINES.get(cfg.federated.engine)(cfg)
    engine.run_dir = run_dir
    # Every callback exists before the checkpoint is restored, so each one's state resumes.
    orchestrator = build_orchestrator(cfg, data, callbacks=run_callbacks(cfg, run_dir, engine, callbacks), engine=engine)
    if payload is not None:
        restore(orchestrator, payload)
        _truncate_metrics(run_dir / "metrics.jsonl", orchestrator.completed_rounds)
    summary = orchestrator.run()
    summary["run_dir"] = str(run_dir)
    return RunResult(run_dir, orchestrator.history, summary, orchestrator)


def _truncate_metrics(path: Path, rounds: int) -> None:
    """Keep the first ``rounds`` lines: a run killed after logging a round but before checkpointing it
    reruns that round, and must not log it twice."""
    if path.is_file():
        lines = path.read_text().splitlines(keepends=True)[:rounds]
        path.write_text("".join(lines))
