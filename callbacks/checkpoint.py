"""A checkpoint after every round, written atomically, from which ``--resume`` continues."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from typing_extensions import override

from fedaux.errors import CheckpointError
from fedaux.federated.hooks import CALLBACKS, RoundCallback

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "fedaux-checkpoint"
VERSION = 2  # 2: the orchestrator's state_dict, callbacks under their state_key; 1: flat fields


def rng_states() -> dict[str, Any]:
    """Generator states of every library a run draws from, in types ``weights_only`` loading accepts."""
    state = np.random.get_state()
    if not isinstance(state, tuple):  # legacy=True, the default, gives the global MT19937's tuple
        raise TypeError(f"numpy's global random state is a {type(state).__name__}, expected its legacy tuple")
    name, keys, pos, has_gauss, cached = state
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


@CALLBACKS.register("checkpoint")
class Checkpointer(RoundCallback):
    """Writes ``<run_dir>/checkpoint.pt`` when each round ends: the orchestrator's ``state_dict()``
    (round, global state, history, drop counts, every callback's state), the config and the RNG
    states. It writes a temporary file and renames it over the old one, so a crash at any moment
    leaves either the previous checkpoint or the new one, never half of one.

    Put it last among the callbacks so the totals it saves include the round just logged.
    """

    def __init__(self, run_dir: str | Path, config_yaml: str) -> None:
        self.path = Path(run_dir) / CHECKPOINT_NAME
        self.config_yaml = config_yaml

    @classmethod
    def from_config(cls, cfg, run_dir: Path) -> Checkpointer:
        return cls(run_dir, OmegaConf.to_yaml(cfg, resolve=True))

    @override
    def on_round_end(self, orchestrator, rnd: int, record: dict[str, Any]) -> None:
        payload = {"format": FORMAT, "version": VERSION, "round": rnd, "config": self.config_yaml,
                   "orchestrator": orchestrator.state_dict(), "rng": rng_states()}
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save(payload, tmp)
        with open(tmp, "rb") as handle:  # the bytes are on disk before the rename makes them current
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """Read a run folder's checkpoint with ``weights_only`` semantics (no arbitrary objects).

    Returns ``{"round": completed rounds, "config": yaml text, "orchestrator": state dict, "rng":
    states, ...}``; a version 1
    checkpoint (fedaux before step 7) is converted.

    Raises:
        CheckpointError: no checkpoint, an unreadable one, or not a fedaux checkpoint.
    """
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint to resume from (is {run_dir} a fedaux run folder?)")
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fedaux checkpoint")
    if payload.get("version") == 1:
        payload = {**payload, "orchestrator": {
            "completed_rounds": payload["round"], "global_state": payload["global_state"],
            "history": payload["history"], "rejections": payload["rejections"], "callbacks": payload["callbacks"]}}
    elif payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')!r}; this fedaux reads 1 and {VERSION}")
    return payload


def restore(orchestrator, payload: dict[str, Any]) -> None:
    """Continue from a checkpoint: one ``load_state_dict`` into a freshly built orchestrator (whose
    callbacks must all exist by now), then the RNG states."""
    orchestrator.load_state_dict(payload["orchestrator"])
    restore_rng_states(payload["rng"])
