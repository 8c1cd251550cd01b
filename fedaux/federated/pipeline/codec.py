"""``*.encode`` and ``*.decode``: the uplink codec (``federated.compression.uplink``) on both tiers.

A base station encodes its update (new state minus payload, plus what earlier rounds dropped:
error feedback) and keeps the new residuals under the ``uplink`` namespace; its edge server
decodes. Each edge server encodes its average the same way (its own residuals, same namespace,
kept on the edge server) and the top level decodes. See :mod:`fedaux.federated.compression`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from fedaux.federated.compression import Compression, UplinkCompression
from fedaux.federated.pipeline.base import STAGES, StageContext, Update, UpdateRejected, UpdateStage

UPLINK_STATE = "uplink"  # the namespace of error-feedback residuals


class _Uplink(UpdateStage):
    def __init__(self, uplink: UplinkCompression) -> None:
        self.uplink = uplink

    @classmethod
    def from_config(cls, cfg: Any, model: torch.nn.Module, strategy: Any) -> _Uplink | None:
        uplink = Compression.from_config(cfg.federated.compression, model).uplink
        return cls(uplink) if uplink.active else None


class _Encode(_Uplink):
    state_key = UPLINK_STATE

    def __call__(self, update: Update, context: StageContext) -> Update:
        wire, residuals = self.uplink.encode(update.state, update.reference, context.previous)
        context.keep.update(residuals)
        return replace(update, state=wire)


class _Decode(_Uplink):
    def __call__(self, update: Update, context: StageContext) -> Update:
        try:
            return replace(update, state=self.uplink.decode(update.state, update.reference))
        except (KeyError, RuntimeError, ValueError) as err:
            raise UpdateRejected(f"its compressed arrays do not decode ({err!r})") from None


@STAGES.register("uplink_encode")
class UplinkEncode(_Encode):
    """A base station encodes its update for its edge server."""

    slot = "base_station.encode"


@STAGES.register("edge_decode")
class EdgeDecode(_Decode):
    """An edge server decodes a base station's update."""

    slot = "edge.decode"


@STAGES.register("edge_encode")
class EdgeEncode(_Encode):
    """An edge server encodes its average for the top level."""

    slot = "edge.encode"


@STAGES.register("top_decode")
class TopDecode(_Decode):
    """The top level decodes an edge server's average."""

    slot = "top.decode"
