"""The interface every stage of the update pipeline implements, and the one order they run in.

A model update travels from a base station to its edge server and on to the top level. Each
step on that way is a *stage*: one object with one interface (:class:`UpdateStage`), placed in
one *slot* of :data:`SLOTS`. The order of the slots is the pipeline's order, written once here:

* base station: local fit, then ``upload`` (what the strategy sends) -> ``privatise`` (local DP)
  -> ``encode`` (the uplink codec);
* edge server, for each base station's update: ``decode`` -> ``validate`` -> ``clip`` (central
  DP); then the edge's aggregation rule (``edge.aggregate``, :mod:`fedaux.federated.aggregation`);
  then, on the edge's average: ``noise`` (central DP) -> ``encode``;
* top level, for each edge server's average: ``decode``; then the sample-weighted average of the
  edge servers (``top.aggregate``) -> ``server_update`` (the strategy's step).

Several stages may share a slot; they run in the order they were composed
(:func:`~fedaux.federated.pipeline.build_pipeline`: built-ins first, then ``federated.stages``).
A stage that keeps state between rounds on the base station or edge server that runs it names
its namespace in :attr:`UpdateStage.state_key`; it reads last round's entries from
:attr:`StageContext.previous` and writes the ones to keep to :attr:`StageContext.keep`. Nothing
else sees that namespace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from fedaux.errors import ConfigError
from fedaux.registry import Registry

State = dict[str, torch.Tensor]
LocalState = dict[str, State]  # a base station's or edge server's kept state: namespace -> entries

# The pipeline's order. "edge.aggregate" and "top.aggregate" are the aggregation rules
# (fedaux.federated.aggregation), not stages; they are listed to show where they run.
SLOTS: tuple[str, ...] = (
    "base_station.upload",
    "base_station.privatise",
    "base_station.encode",
    "edge.decode",
    "edge.validate",
    "edge.clip",
    "edge.aggregate",
    "edge.noise",
    "edge.encode",
    "top.decode",
    "top.aggregate",
    "top.server_update",
)
STAGE_SLOTS = tuple(s for s in SLOTS if not s.endswith(".aggregate"))


class UpdateRejected(Exception):
    """A stage refuses an update (it does not decode, it holds NaN, ...): the base station is dropped
    from the round with this reason."""


@dataclass
class Update:
    """An update on its way up.

    Attributes:
        state: the tensors by name (on the wire, ``<name>#<part>`` entries, after an encode stage).
        reference: what the sender started from this round: the payload it received (base station
            and edge) or the global state (top); same names as the decoded ``state``.
        sender: the base station's (or, above the edge, the edge server's) index.
        weight: the samples behind it (aggregation weight).
        seed: the sender's seed for this round (:mod:`fedaux.federated.seeds`), for noise.
        nbytes: bytes of ``state`` as it crossed the last link (set by the pipeline).
    """

    state: State
    reference: Mapping[str, torch.Tensor]
    sender: int
    weight: float
    seed: int
    nbytes: int = 0


@dataclass
class StageContext:
    """What a stage may read besides the update, and where it keeps state.

    Attributes:
        rnd: the round.
        previous: this stage's namespace of the holder's local state from its last round (read only).
        keep: the entries to keep for the next round (the pipeline stores them under ``state_key``).
        model: at the base station, the model after the local fit.
        fit_callbacks: at the base station, the strategy's Lightning callbacks of that fit.
        weight_share: at the edge, after aggregation: the largest share one base station had of the
            edge's total weight (bounds its influence on the average).
        participants: at the top: base stations aggregated this round.
        clients: at the top: base stations in the federation.
    """

    rnd: int
    previous: Mapping[str, torch.Tensor] = field(default_factory=dict)
    keep: State = field(default_factory=dict)
    model: torch.nn.Module | None = None
    fit_callbacks: Sequence[Any] = ()
    weight_share: float = 1.0
    participants: int = 0
    clients: int = 0


class UpdateStage:
    """One step of the update pipeline.

    Subclasses set :attr:`slot` (one of :data:`STAGE_SLOTS`) and implement :meth:`__call__`; those
    that keep local state set :attr:`state_key`. A stage is built by :meth:`from_config`, which may
    return None when the config leaves it off, and must be picklable: worker processes and Flower
    nodes get a copy.
    """

    slot: ClassVar[str] = ""
    state_key: ClassVar[str | None] = None

    @classmethod
    def from_config(cls, cfg: Any, model: torch.nn.Module, strategy: Any) -> UpdateStage | None:
        """The stage for experiment config ``cfg`` (``model``: the global model's architecture;
        ``strategy``: the run's :class:`~fedaux.federated.strategies.Strategy`)."""
        return cls()

    def __call__(self, update: Update, context: StageContext) -> Update:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Server-side state a resumed run needs (kept by the stage object on the server)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(slot={self.slot!r})"


# Stage classes by name, for ``federated.stages`` (which also takes "package.module:Class").
STAGES: Registry[type[UpdateStage]] = Registry("update stage", "federated.stages", allow_import_path=True)


def check_stage_class(cls: Any, key: str) -> type[UpdateStage]:
    """``cls`` if it is an :class:`UpdateStage` subclass with a valid slot, else a ConfigError naming ``key``."""
    if not (isinstance(cls, type) and issubclass(cls, UpdateStage)):
        raise ConfigError(f"{key}: {cls!r} is not an UpdateStage subclass (fedaux.federated.pipeline.UpdateStage)")
    if cls.slot not in STAGE_SLOTS:
        raise ConfigError(f"{key}: {cls.__name__}.slot={cls.slot!r} is not valid; choose one of {list(STAGE_SLOTS)}")
    return cls
