"""Round-level hooks: how callbacks observe the federated loop without copying it.

A run calls ``on_run_start``, then per round: ``on_round_start`` -> per base station
``on_client_start`` (when an engine hands the local fit out) and ``on_client_done`` or
``on_client_dropped`` -> ``on_aggregated`` -> ``on_evaluated`` -> ``log_round`` (every callback
adds its keys to the round record) -> ``on_round_end`` (writers see the complete record). After
the last round ``add_to_summary`` (every callback adds its totals) and ``on_run_end`` (writers see
the complete summary). ``on_run_teardown`` always runs, also after a crash, so open files and W&B
runs are closed.

A callback with state to resume returns it from ``state_dict()``; the orchestrator's own
``state_dict()`` holds it under the callback's ``state_key`` (as Lightning's ``Callback.state_key``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fedaux.errors import ConfigError
from fedaux.registry import Registry

if TYPE_CHECKING:
    from fedaux.federated.orchestrator import FederatedOrchestrator


@dataclass
class ClientUpdate:
    """What one base station sent back after local training."""

    client: int
    edge: int
    state: dict[str, torch.Tensor]
    num_samples: int
    train_metrics: dict[str, float]  # ``train/*`` epoch means of the client's last local epoch
    fit_seconds: float
    nbytes: int = 0  # bytes of ``state`` as sent
    local_state: dict[str, dict[str, torch.Tensor]] | None = None  # what the base station keeps, by namespace (in-process engines)
    loop_seconds: float = 0.0  # the part of ``fit_seconds`` inside Lightning's training loop

    @property
    def train_loss(self) -> float:
        return self.train_metrics.get("train/loss", float("nan"))


@dataclass
class RoundAggregate:
    """The outcome of aggregation, with what crossed each tier."""

    global_state: dict[str, torch.Tensor]
    edge_samples: dict[int, int]
    clients: list[int]
    bytes_down: dict[str, int]  # tier name -> bytes sent towards the clients
    bytes_up: dict[str, int]  # tier name -> bytes sent towards the top level


class RoundCallback:
    """Base class for round hooks; every hook is optional.

    A subclass may also be a ``lightning.Callback``: it is then attached to every base station's
    Trainer, on every engine. The sequential engine uses the object itself; each worker process
    holds a copy, made when the workers start, and each Flower node builds its own from
    ``logging.callbacks``: its Lightning hooks run there and what they change stays there (as with
    Lightning's own multi-process strategies). ``trainer.datamodule.client`` and
    ``trainer.datamodule.rnd`` name the base station and round being fitted.

    ``reads_update_state``: whether ``on_client_done`` may read ``update.state``. A callback that
    overrides it and leaves this True keeps the updates coming to the server one by one; with
    False the worker processes may fold each edge server's updates themselves
    (``federated.fold_in_workers``) and ``update.state`` is then empty in that hook.
    """

    reads_update_state: bool = True

    @property
    def state_key(self) -> str:
        """The key of this callback's state in a checkpoint: the class's qualified name.

        Override it (e.g. adding a constructor argument) when a run holds two stateful callbacks of
        one class; the orchestrator refuses two with the same key rather than mix their states.
        """
        return type(self).__qualname__

    def on_run_start(self, orchestrator: FederatedOrchestrator) -> None: ...

    def on_round_start(self, orchestrator: FederatedOrchestrator, rnd: int, clients: list[int]) -> None: ...

    def on_client_start(self, orchestrator: FederatedOrchestrator, rnd: int, client: int) -> None:
        """A base station's local fit is handed out, by every engine.

        Sequential engine: just before that fit, so starts and ends alternate. Worker processes:
        when a worker takes the fit (up to ``2 * workers`` fits ahead of the updates folded so
        far). Flower: when the round's training messages are sent. ``on_client_done`` /
        ``on_client_dropped`` come in base-station order in every engine.
        """

    def on_client_done(self, orchestrator: FederatedOrchestrator, rnd: int, update: ClientUpdate) -> None: ...

    def on_client_dropped(self, orchestrator: FederatedOrchestrator, rnd: int, client: int, reason: str) -> None:
        """A base station failed (raised, timed out, sent nothing) or its update was rejected."""

    def on_aggregated(self, orchestrator: FederatedOrchestrator, rnd: int, aggregate: RoundAggregate) -> None: ...

    def on_evaluated(self, orchestrator: FederatedOrchestrator, rnd: int, metrics: dict[str, Any]) -> None:
        """The round's metrics: floats, and ``clients/dropped_reasons`` (a string) when base stations dropped."""

    def log_round(self, orchestrator: FederatedOrchestrator, rnd: int, record: dict[str, Any]) -> None:
        """Add this callback's keys for the round to ``record``."""

    def on_round_end(self, orchestrator: FederatedOrchestrator, rnd: int, record: dict[str, Any]) -> None: ...

    def add_to_summary(self, orchestrator: FederatedOrchestrator, summary: dict[str, Any]) -> None:
        """Add this callback's run totals to ``summary`` (see :func:`at_target`)."""

    def on_run_end(self, orchestrator: FederatedOrchestrator, summary: dict[str, Any]) -> None: ...

    def on_run_teardown(self, orchestrator: FederatedOrchestrator, failed: bool) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# Callbacks by name, for ``logging.callbacks`` (which also takes "package.module:Class"). A class with a
# ``from_config(cfg, run_dir)`` classmethod is built by it (returning None leaves it out); any other
# is called with no arguments.
CALLBACKS: Registry[Callable[..., Any]] = Registry("callback", "logging.callbacks", allow_import_path=True)


def build_callback(spec: str, cfg: Any, run_dir: Path, key: str = "logging.callbacks") -> RoundCallback | None:
    """The callback ``spec`` names (a :data:`CALLBACKS` name or an import path), built for this run."""
    factory = CALLBACKS.get(spec, key)
    from_config = getattr(factory, "from_config", None)
    callback = from_config(cfg, run_dir) if from_config is not None else factory()
    if callback is not None and not isinstance(callback, RoundCallback):
        raise ConfigError(f"{key}: {spec!r} built a {type(callback).__name__}, not a fedaux RoundCallback")
    return callback


def configured_callbacks(cfg: Any, run_dir: Path) -> list[RoundCallback]:
    """The callbacks ``logging.callbacks`` names, built for this run (those that build to None left out)."""
    built = [build_callback(spec, cfg, run_dir, key=f"logging.callbacks[{i}]") for i, spec in enumerate(cfg.logging.callbacks)]
    return [c for c in built if c is not None]


def lightning_callbacks_from_config(cfg: Any, run_dir: Path | None = None) -> list[Any]:
    """The callbacks of ``logging.callbacks`` that are also Lightning callbacks: what a base station
    attaches to its fits where the server's objects are not at hand (a Flower node)."""
    import lightning as L

    return [c for c in configured_callbacks(cfg, run_dir or Path(cfg.output_dir)) if isinstance(c, L.Callback)]


def at_target(orchestrator: FederatedOrchestrator, summary: dict[str, Any], record_key: str) -> Any:
    """The value ``record_key`` had in the round that first reached the target accuracy (None if
    no round did, or that round has no such key): for "MB to target"-style summary figures."""
    reached = summary.get("rounds_to_target")
    if reached is None:
        return None
    record = next((r for r in orchestrator.history if r["round"] == reached), None)
    return None if record is None else record.get(record_key)


class KeepsTotals:
    """For callbacks whose only resumable state is a ``_totals`` dict (bytes, seconds, ...):
    ``state_dict`` / ``load_state_dict`` so a resumed run keeps counting from where it stopped."""

    _totals: dict[str, Any]

    def state_dict(self) -> dict[str, Any]:
        return {"totals": dict(self._totals)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._totals = dict(state["totals"])
