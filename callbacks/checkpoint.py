"""A checkpoint after every round, written atomically, from which ``--resume`` continues."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from typing_extensions import override

from fedaux.federated.hooks import RoundCallback

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "fedaux-checkpoint"


def callback_key(index: int, callback: object) -> str:
    return f"{type(callback).__name__}"


def rng_states() -> dict[str, Any]:
    """Generator states of every library a run draws from, in types ``weights_only`` loading accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
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


class Checkpointer(RoundCallback):
    """Writes ``<run_dir>/checkpoint.pt`` when each round ends: the global state, the round, the
    metric history, every callback's ``state_dict()`` (bytes, time, ... totals), per-client drop
    counts and the RNG states. It writes a temporary file and renames it over the old one, so a
    crash at any moment leaves either the previous checkpoint or the new one, never half of one.

    Put it last among the callbacks so the totals it saves include the round just logged.
    """

    def __init__(self, run_dir: str | Path, config_yaml: str) -> None:
        self.path = Path(run_dir) / CHECKPOINT_NAME
        self.config_yaml = config_yaml

    @override
    def on_round_end(self, orchestrator, rnd: int, record: dict[str, Any]) -> None:
        payload = {
            "format": FORMAT,
            "version": 1,
            "round": rnd,
            "config": self.config_yaml,
            "global_state": orchestrator.global_state,
            "history": orchestrator.history,
            "rejections": dict(orchestrator.rejections),
            "callbacks": {callback_key(i, cb): cb.state_dict() for i, cb in enumerate(orchestrator.callbacks)},
            "rng": rng_states(),
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save(payload, tmp)
        with open(tmp, "rb") as handle:  # the bytes are on disk before the rename makes them current
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """Read a run folder's checkpoint with ``weights_only`` semantics (no arbitrary objects)."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from (is {run_dir} a fedaux run folder?)")
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:
        raise ValueError(f"{path}: unreadable checkpoint ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a fedaux checkpoint")
    return payload


def restore(orchestrator, payload: dict[str, Any]) -> None:
    """Put a checkpoint's state back into a freshly built orchestrator and its callbacks."""
    orchestrator.global_state = payload["global_state"]
    orchestrator.history = list(payload["history"])
    orchestrator.completed_rounds = int(payload["round"])
    orchestrator.rejections = {int(k): int(v) for k, v in payload["rejections"].items()}
    saved = payload["callbacks"]
    for i, callback in enumerate(orchestrator.callbacks):
        key = callback_key(i, callback)
        if key in saved and saved[key]:
            callback.load_state_dict(saved[key])
    restore_rng_states(payload["rng"])
