"""The update pipeline: one ordered list of stages, composed from the config.

:data:`~fedaux.federated.pipeline.base.SLOTS` gives the order; :func:`build_pipeline` fills it with
the built-in stages the config enables, then the user's ``federated.stages``. Every engine runs
a base station's stages through the same :class:`UpdatePipeline` (in
:class:`~fedaux.federated.runtime.ClientRuntime`), and the server runs the edge and top stages
(:class:`~fedaux.federated.orchestrator.FederatedOrchestrator`). A new stage is one file: a
subclass of :class:`UpdateStage` with its ``slot``, registered in :data:`STAGES` or named by
import path in ``federated.stages``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fedaux.federated.pipeline.base import (
    SLOTS,
    STAGE_SLOTS,
    STAGES,
    LocalState,
    StageContext,
    State,
    Update,
    UpdateRejected,
    UpdateStage,
    check_stage_class,
)
from fedaux.federated.pipeline.central_dp import ClipAtEdge, NoiseAtEdge
from fedaux.federated.pipeline.codec import EdgeDecode, EdgeEncode, TopDecode, UplinkEncode
from fedaux.federated.pipeline.local_dp import LocalDP
from fedaux.federated.pipeline.server_update import ServerUpdate
from fedaux.federated.pipeline.upload import STRATEGY_STATE, StrategyUpload
from fedaux.federated.pipeline.validate import ValidateUpdate

# Built-in stages, in slot order; each builds to None where the config leaves it off.
BUILT_IN: tuple[type[UpdateStage], ...] = (
    StrategyUpload, LocalDP, UplinkEncode,
    EdgeDecode, ValidateUpdate, ClipAtEdge, NoiseAtEdge, EdgeEncode,
    TopDecode, ServerUpdate,
)


class UpdatePipeline:
    """Stages grouped by slot, run in :data:`SLOTS` order, each with its own local-state namespace.

    Args:
        stages: the stages; those of one slot run in the order given.
    """

    def __init__(self, stages: Sequence[UpdateStage]) -> None:
        for stage in stages:
            check_stage_class(type(stage), f"stage {stage!r}")
        self.stages = sorted(stages, key=lambda s: STAGE_SLOTS.index(s.slot))  # stable: keeps order within a slot
        self._tiers: dict[str, list[UpdateStage]] = {}
        for stage in self.stages:
            self._tiers.setdefault(stage.slot, []).append(stage)

    def slot(self, name: str) -> list[UpdateStage]:
        """The stages of one slot, in order."""
        return list(self._tiers.get(name, []))

    def run(self, slots: Sequence[str], update: Update, context: StageContext,
            local_state: Mapping[str, State] | None = None) -> tuple[Update, LocalState]:
        """Run the stages of ``slots`` on ``update``; returns it and the holder's new local state.

        ``local_state`` is the holder's (base station's or edge server's) state from its last
        round; each stage reads its own namespace and writes what it keeps. Namespaces of stages
        that did not run here are carried over unchanged.

        Raises:
            UpdateRejected: a stage refused the update.
        """
        local_state = dict(local_state or {})
        for name in slots:
            for stage in self._tiers.get(name, []):
                if stage.state_key:
                    context.previous, context.keep = local_state.get(stage.state_key, {}), {}
                update = stage(update, context)
                if stage.state_key:
                    if context.keep:
                        local_state[stage.state_key] = context.keep
                    else:
                        local_state.pop(stage.state_key, None)
                context.previous, context.keep = {}, {}
        return update, local_state

    def at_base_station(self, update: Update, context: StageContext,
                        local_state: Mapping[str, State] | None = None) -> tuple[Update, LocalState]:
        """``upload`` -> ``privatise`` -> ``encode`` after a local fit."""
        return self.run(("base_station.upload", "base_station.privatise", "base_station.encode"),
                        update, context, local_state)

    def edge_receive(self, update: Update, context: StageContext,
                     local_state: Mapping[str, State] | None = None) -> tuple[Update, LocalState]:
        """``decode`` -> ``validate`` -> ``clip`` for one base station's update at its edge server."""
        return self.run(("edge.decode", "edge.validate", "edge.clip"), update, context, local_state)

    def edge_send(self, update: Update, context: StageContext,
                  local_state: Mapping[str, State] | None = None) -> tuple[Update, LocalState]:
        """``noise`` -> ``encode`` on an edge server's average."""
        return self.run(("edge.noise", "edge.encode"), update, context, local_state)

    def top_receive(self, update: Update, context: StageContext) -> Update:
        """``decode`` for one edge server's average at the top level."""
        return self.run(("top.decode",), update, context)[0]

    def top_update(self, update: Update, context: StageContext) -> Update:
        """``server_update`` on the average of the edge servers."""
        return self.run(("top.server_update",), update, context)[0]

    def state_dict(self) -> dict[str, Any]:
        """Each stage's server-side state, by position (stages with none are left out)."""
        return {f"{i}:{type(s).__name__}": state for i, s in enumerate(self.stages) if (state := s.state_dict())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for i, stage in enumerate(self.stages):
            saved = state.get(f"{i}:{type(stage).__name__}")
            if saved:
                stage.load_state_dict(saved)

    def __repr__(self) -> str:
        return "UpdatePipeline(" + " -> ".join(f"{s.slot}:{type(s).__name__}" for s in self.stages) + ")"


def build_pipeline(cfg: Any, model: torch.nn.Module, strategy: Any) -> UpdatePipeline:
    """The built-in stages ``cfg`` enables, then ``federated.stages`` (names or import paths)."""
    stages = [stage for cls in BUILT_IN if (stage := cls.from_config(cfg, model, strategy)) is not None]
    for i, spec in enumerate(cfg.federated.stages):
        key = f"federated.stages[{i}]"
        cls = check_stage_class(STAGES.get(spec, key), key)
        stage = cls.from_config(cfg, model, strategy)
        if stage is not None:
            stages.append(stage)
    return UpdatePipeline(stages)


def check_config(cfg: Any) -> None:
    """``federated.stages``: every entry names an update stage class with a valid slot."""
    for i, spec in enumerate(cfg.federated.stages):
        key = f"federated.stages[{i}]"
        check_stage_class(STAGES.get(spec, key), key)


__all__ = ["BUILT_IN", "SLOTS", "STAGES", "STAGE_SLOTS", "STRATEGY_STATE", "LocalState", "StageContext", "State",
           "Update", "UpdatePipeline", "UpdateRejected", "UpdateStage", "build_pipeline"]
