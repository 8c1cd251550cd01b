"""Applying a trained run to flows: load it, window the flows as training did, predict per flow.

A run folder holds ``config.yaml`` (the experiment), ``model.pt`` (the final global state dict) and
``data.json`` (what the model expects: class names per target, features, window length, the
packet-length quantity). A flow's probability for a class is the mean of its windows' softmax
probabilities (:func:`~fedaux.model.module.flow_means`); its prediction is the most probable class.
Beside it, a flow's unknown score (:mod:`fedaux.unknown`) says how unlike every known class it looks;
above a threshold the flow is labelled ``unknown``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from fedaux.data.features import cut_windows, packet_features
from fedaux.data.flows import FlowCollection
from fedaux.data.samples import stream
from fedaux.errors import ConfigError, DataError
from fedaux.model.module import flow_means
from fedaux.unknown import STATISTICS_FILE, FeatureStatistics, UnknownScoring, window_outputs

UNKNOWN = "unknown"
ETHERNET_HEADER = 14  # bytes between an IP packet and its Ethernet frame length (no VLAN tag)

# A predictor maps windows (N, C, packets) float32 to {task: (N, K) probabilities}; the run's own
# model may add the main-task logits and the trunk's features (fedaux.unknown.WINDOW_LOGITS, WINDOW_FEATURES).
Predictor = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass
class TrainedRun:
    """A run folder's model and what it expects of the data it classifies."""

    run_dir: Path
    cfg: DictConfig
    model: Any  # MultiTaskModule, in eval mode
    info: dict[str, Any]  # data.json

    @property
    def tasks(self) -> list[str]:
        return list(self.model.task_names)

    def class_names(self, task: str) -> list[str]:
        return list(self.info["class_names"][self.model.tasks[task].target])

    @classmethod
    def load(cls, run_dir: str | Path) -> TrainedRun:
        """Rebuild the model from ``config.yaml`` and load ``model.pt``.

        Raises:
            ConfigError: the folder is not a finished run, or its config does not fit this fedaux
                (the message names the key).
        """
        from fedaux.config import load_config_text
        from fedaux.model import build_model

        run_dir = Path(run_dir)
        missing = [name for name in ("config.yaml", "model.pt") if not (run_dir / name).is_file()]
        if missing:
            raise ConfigError(f"{run_dir}: not a finished fedaux run folder (no {', '.join(missing)})")
        cfg = load_config_text((run_dir / "config.yaml").read_text(), f"{run_dir}/config.yaml")
        info = _data_info(run_dir, cfg)
        num_classes = {name: len(names) for name, names in info["class_names"].items()}
        model = build_model(cfg.model, num_classes, int(info["packets"]), len(info["features"]))
        state = torch.load(run_dir / "model.pt", weights_only=True, map_location="cpu")
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ConfigError(f"{run_dir}/model.pt does not fit the model config.yaml describes: "
                              f"{str(err).splitlines()[0]}") from None
        return cls(run_dir, cfg, model.eval(), info)

    def window_spec(self) -> dict[str, Any]:
        """How flows were cut into windows for testing: repeated exactly at prediction time."""
        data = self.cfg.data
        return {"subflows_per_flow": int(data.subflows_per_flow), "min_packets": int(data.min_packets),
                "seed": int(self.cfg.seed)}

    def predictor(self, batch_size: int = 1024, extras: bool = False) -> Predictor:
        """Eager PyTorch on the CPU: windows -> softmax probabilities per task and, with ``extras``,
        the main-task logits and the trunk's features the unknown scores read
        (:func:`fedaux.unknown.window_outputs`)."""
        model = self.model

        def predict(x: np.ndarray) -> dict[str, np.ndarray]:
            return window_outputs(model, x, batch_size, extras=extras)

        return predict

    def unknown_scoring(self) -> UnknownScoring:
        """The run's unknown scores: its feature statistics (``unknown.pt``), ``model.unknown`` and
        the thresholds ``summary.json`` suggests (a run from before them has neither)."""
        path = self.run_dir / STATISTICS_FILE
        summary_path = self.run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        unknown = self.cfg.model.unknown
        return UnknownScoring(self.model.main_task, FeatureStatistics.load(path) if path.is_file() else None,
                              float(unknown.temperature), str(unknown.score), summary.get("suggested_unknown_threshold"))


def _data_info(run_dir: Path, cfg: DictConfig) -> dict[str, Any]:
    """``data.json``; a run from before it existed gets it rebuilt from its config's data."""
    path = run_dir / "data.json"
    if path.is_file():
        return json.loads(path.read_text())
    from fedaux.data.samples import build_federated_data

    fed = cfg.federated
    data = build_federated_data(cfg.data, fed.base_stations, fed.edge_servers, cfg.seed,
                                main_target=cfg.model.heads[cfg.model.main_task].target)
    return data.describe()


def check_packet_length(flows: FlowCollection, expected: str, convert: bool, source: str) -> FlowCollection:
    """Refuse flows whose lengths count another quantity than the model learned from, unless the
    user asked to convert (frame <-> ip, assuming Ethernet's 14-byte header)."""
    if flows.packet_length == expected:
        return flows
    if not convert:
        raise DataError(
            f"{source}: its packet lengths are {flows.packet_length} lengths, the model learned from {expected} "
            f"lengths; pass --convert-lengths to convert (frame = ip + {ETHERNET_HEADER} bytes, Ethernet) or read "
            f"captures with data.capture.length={expected}"
        )
    pair = (flows.packet_length, expected)
    if pair not in (("frame", "ip"), ("ip", "frame")):
        raise DataError(f"{source}: cannot convert {flows.packet_length} lengths to {expected} lengths")
    shift = ETHERNET_HEADER if expected == "frame" else -ETHERNET_HEADER
    lengths = np.clip(flows.lengths.astype(np.int64) + shift, 1, 65535).astype(np.uint16)
    return replace(flows, lengths=lengths, packet_length=expected)


def flow_windows(flows: FlowCollection, features: list[str], packets: int, windowing: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Windows of every flow, cut as the run cut its test flows (same features, length, count and
    seeded offsets: ``windowing`` is :meth:`TrainedRun.window_spec`). Returns ``x`` ``(N, C, packets)``,
    ``flow_index`` ``(N,)`` and the names of flows shorter than ``min_packets`` (no window)."""
    values = packet_features(flows, list(features))
    windows = cut_windows(flows, np.arange(flows.num_flows), int(packets), int(windowing["subflows_per_flow"]),
                          int(windowing["min_packets"]), stream(int(windowing["seed"]), "windows_test"), values)
    return windows.x, windows.flow_index, windows.dropped_flows


def model_spec(run: TrainedRun) -> dict[str, Any]:
    """The same fields an exported model's metadata holds (see :func:`fedaux.export.metadata`)."""
    tasks = [t for t in run.tasks if run.model.tasks[t].kind == "classification"]
    return {"tasks": tasks, "main_task": run.model.main_task, "class_names": {t: run.class_names(t) for t in tasks},
            "features": list(run.info["features"]), "packets": int(run.info["packets"]),
            "packet_length": run.info["packet_length"], "windowing": run.window_spec()}


@dataclass(frozen=True)
class UnknownRule:
    """Which unknown score the rows show, and above which value a flow is ``unknown``.

    Attributes:
        scoring: the run's (or an exported model's) :class:`~fedaux.unknown.UnknownScoring`.
        score: an :data:`~fedaux.unknown.UNKNOWN_SCORES` name.
        threshold: a flow scoring above it is ``unknown``; None: the score is shown, not applied.
    """

    scoring: UnknownScoring
    score: str
    threshold: float | None = None


def predict_flows(spec: Mapping[str, Any], flows: FlowCollection, predictor: Predictor, *,
                  min_confidence: float = 0.0, top: int = 3, unknown: UnknownRule | None = None) -> list[dict[str, Any]]:
    """One row per flow with at least one window: its name, window count, each head's predicted
    class and probability, with ``unknown`` the flow's ``unknown_score``, and the main task's ``top``
    classes. A main-task prediction below ``min_confidence``, or scoring above ``unknown.threshold``,
    is ``unknown``. ``spec`` is :func:`model_spec` or an exported model's metadata."""
    x, flow_index, _ = flow_windows(flows, spec["features"], spec["packets"], spec["windowing"])
    windows = np.bincount(flow_index, minlength=flows.num_flows)
    per_flow, scores = flow_predictions(spec, predictor, x, flow_index, flows.num_flows, unknown)
    threshold = unknown.threshold if unknown is not None else None
    return [{"flow": flows.flow_names[f], "windows": int(windows[f]),
             **prediction(spec, {task: p[f] for task, p in per_flow.items()}, min_confidence=min_confidence, top=top,
                          unknown_score=None if scores is None else float(scores[f]), unknown_threshold=threshold)}
            for f in np.flatnonzero(windows)]


def flow_predictions(spec: Mapping[str, Any], predictor: Predictor, x: np.ndarray, flow_index: np.ndarray,
                     num_flows: int, unknown: UnknownRule | None = None
                     ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Windows ``x`` ``(N, C, packets)`` of flows ``flow_index`` ``(N,)`` -> per classification task
    ``(num_flows, K)``: each flow's mean window probability (zeros for a flow without windows),
    and with ``unknown`` each flow's unknown score ``(num_flows,)`` (else None). One forward pass
    serves both; a file's flows and a stream's rows go through here alike."""
    outputs = predictor(x)
    probs = {task: flow_means(outputs[task], flow_index, num_flows).numpy() for task in spec["tasks"]}
    scores = (unknown.scoring.score(unknown.score, outputs, flow_index, num_flows).numpy()
              if unknown is not None else None)
    return probs, scores


def prediction(spec: Mapping[str, Any], probs: Mapping[str, np.ndarray], *, min_confidence: float = 0.0,
               top: int = 3, unknown_score: float | None = None, unknown_threshold: float | None = None
               ) -> dict[str, Any]:
    """A row's prediction columns from one flow's class probabilities ``{task: (K,)}``: each head's
    class and probability (the main task's ``unknown`` below ``min_confidence`` or with an
    ``unknown_score`` above ``unknown_threshold``), the ``unknown_score`` where one is given, then
    the main task's ``top`` classes and their probabilities (:func:`prediction_columns` lists them)."""
    main = spec["main_task"]
    row: dict[str, Any] = {}
    rejected = unknown_score is not None and unknown_threshold is not None and unknown_score > unknown_threshold
    for task in spec["tasks"]:
        names, p = spec["class_names"][task], probs[task]
        best = int(np.argmax(p))
        row[task] = names[best] if (task != main or (p[best] >= min_confidence and not rejected)) else UNKNOWN
        row[f"{task}_probability"] = round(float(p[best]), 6)
    if unknown_score is not None:
        row["unknown_score"] = round(unknown_score, 6)
    names, p = spec["class_names"][main], probs[main]
    for rank, k in enumerate(np.argsort(-p)[:top], start=1):
        row[f"top{rank}"] = names[int(k)]
        row[f"top{rank}_probability"] = round(float(p[k]), 6)
    return row


def prediction_columns(spec: Mapping[str, Any], top: int = 3, unknown_score: bool = False) -> list[str]:
    """The keys :func:`prediction` gives, in order: known before any row (a stream's CSV header)."""
    columns = [c for task in spec["tasks"] for c in (task, f"{task}_probability")]
    columns += ["unknown_score"] if unknown_score else []
    ranks = min(max(top, 0), len(spec["class_names"][spec["main_task"]]))
    return columns + [c for rank in range(1, ranks + 1) for c in (f"top{rank}", f"top{rank}_probability")]
