"""One Weights & Biases run per experiment, the round as its step."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from typing_extensions import override

from fedaux.errors import ConfigError
from fedaux.federated.hooks import CALLBACKS, RoundCallback

if TYPE_CHECKING:
    from wandb import Run

WandbMode = Literal["offline", "online", "disabled"]
WANDB_MODES: tuple[WandbMode, ...] = ("offline", "online", "disabled")


@CALLBACKS.register("wandb")
class WandbLogger(RoundCallback):
    """Logs every round record to W&B with ``step=round`` and the summary at the end.

    ``mode="offline"`` (the default) writes the run under ``<save_dir>/wandb`` with no network and
    no login; ``wandb sync`` uploads it later. The run is finished in :meth:`on_run_teardown`, which the
    orchestrator calls in a ``finally``, so a crash marks the run failed instead of leaving it open.

    Args:
        config: the resolved experiment config, logged as the run's config.
    """

    def __init__(self, save_dir: str | Path, config: dict[str, Any], project: str = "fedaux", mode: str = "offline",
                 name: str | None = None, entity: str | None = None, tags: list[str] | None = None) -> None:
        if mode not in WANDB_MODES:
            raise ConfigError(f"logging.wandb.mode={mode!r} is not valid; choose one of {list(WANDB_MODES)}")
        self.mode: WandbMode = mode
        self.save_dir, self.config, self.project = Path(save_dir), config, project
        self.name, self.entity, self.tags = name, entity, list(tags or [])
        self.run: Run | None = None

    @classmethod
    def from_config(cls, cfg, run_dir: Path) -> WandbLogger | None:
        from omegaconf import OmegaConf

        w = cfg.logging.wandb
        if w.mode == "disabled":
            return None
        config = OmegaConf.to_container(cfg, resolve=True)
        if not isinstance(config, dict):
            raise ConfigError(f"the experiment config must be a mapping, got {type(config).__name__}")
        # The experiment config is a structured config: its keys are field names, all strings.
        return cls(run_dir, cast(dict[str, Any], config), project=w.project, mode=w.mode,
                   name=w.name or Path(run_dir).name, entity=w.entity, tags=list(w.tags))

    @property
    def run_dir(self) -> Path | None:
        """The folder W&B writes this run to (``.../wandb/offline-run-*`` in offline mode)."""
        return Path(self.run.dir).parent if self.run is not None else None

    @override
    def on_run_start(self, orchestrator) -> None:
        import wandb

        self.save_dir.mkdir(parents=True, exist_ok=True)
        # An agent started by `wandb sweep` sets WANDB_SWEEP_ID; wandb.init then joins the sweep.
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=self.project, entity=self.entity, name=self.name, tags=self.tags, mode=self.mode,
            dir=str(self.save_dir), config=self.config, settings=wandb.Settings(console="off", x_disable_stats=True),
        )
        self.run.define_metric("round")
        self.run.define_metric("*", step_metric="round")

    @override
    def on_round_end(self, orchestrator, rnd: int, record: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.log(record, step=rnd)

    @override
    def on_run_end(self, orchestrator, summary: dict[str, Any]) -> None:
        if self.run is not None:
            for key, value in summary.items():
                self.run.summary[f"summary/{key}"] = value

    @override
    def on_run_teardown(self, orchestrator, failed: bool) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None
