"""Compressed model updates: what actually travels between base stations and edge servers.

A codec turns one float tensor into a few wire tensors (``encode``) and back (``decode``). A
state is encoded tensor by tensor into a flat ``dict[str, Tensor]`` whose keys are
``<name>#<part>``, so the wire format is still "state by name": the byte counters and Flower's
``ArrayRecord`` carry it unchanged and count exactly what is sent. Integer tensors (BatchNorm's
``num_batches_tracked``) travel as they are.

Uplink (base station to edge server, ``federated.compression.uplink``): the base station encodes
its *update* (its new state minus the payload it received), adding first what earlier rounds'
compression dropped (error feedback, Seide et al. 2014; Karimireddy et al. 2019), and keeps the
new residual as local state. The edge server decodes and adds the payload back; it sends its
average up to the top level the same way (its own residual kept by the orchestrator). Downlink
(``federated.compression.downlink``): the global state itself, ``fp16`` or ``int8``, on both
tiers (``topk`` would need every base station to hold the previous global state, which sampled
base stations do not).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

import torch

from fedaux.errors import ConfigError
from fedaux.registry import Registry

SEP = "#"  # between a tensor's name and its wire part
RESIDUAL = "residual/"  # prefix of error-feedback entries in a base station's local state


class Codec:
    """Encodes one float tensor into named wire parts, and decodes them.

    ``sparse`` codecs drop entries (the rest waits in the error-feedback residual).
    """

    sparse = False

    def encode(self, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def decode(self, parts: Mapping[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


CODECS: Registry[type[Codec]] = Registry("update codec", "federated.compression.uplink")


@CODECS.register("none")
class Identity(Codec):
    """Full precision (what fedaux sends without compression)."""

    def encode(self, tensor):
        return {"v": tensor}

    def decode(self, parts, like):
        return parts["v"].to(like.dtype)


@CODECS.register("fp16")
class Half(Codec):
    """IEEE half precision: 2 bytes a value."""

    def encode(self, tensor):
        return {"v": tensor.to(torch.float16)}

    def decode(self, parts, like):
        return parts["v"].to(like.dtype)


@CODECS.register("int8")
class Int8(Codec):
    """Symmetric per-tensor int8: ``q = round(x / s)`` with ``s = max|x| / 127``; 1 byte a value
    plus one float32 scale.

    Example:
        >>> parts = Int8().encode(torch.tensor([0.5, -1.0, 0.25]))
        >>> parts["q"].dtype, Int8().decode(parts, torch.zeros(3))
        (torch.int8, tensor([ 0.5039, -1.0000,  0.2520]))
    """

    def encode(self, tensor):
        scale = tensor.detach().abs().max().to(torch.float32) / 127.0
        safe = scale if scale > 0 else torch.ones_like(scale)
        q = torch.round(tensor / safe).clamp_(-127, 127).to(torch.int8)
        return {"q": q, "scale": scale.reshape(1)}

    def decode(self, parts, like):
        return (parts["q"].to(torch.float32) * parts["scale"]).to(like.dtype)


@CODECS.register("topk")
class TopK(Codec):
    """The ``fraction`` of entries largest in magnitude, as int32 indices and float32 values.

    Example:
        >>> parts = TopK(0.5).encode(torch.tensor([0.1, -3.0, 2.0, 0.0]))
        >>> TopK(0.5).decode(parts, torch.zeros(4))
        tensor([ 0., -3.,  2.,  0.])
    """

    sparse = True

    def __init__(self, fraction: float = 0.01) -> None:
        if not 0 < fraction <= 1:
            raise ConfigError(f"federated.compression.topk_fraction={fraction} must be in (0, 1]")
        self.fraction = fraction

    @classmethod
    def from_options(cls, topk_fraction: float = 0.01, **_options: Any) -> TopK:
        return cls(topk_fraction)

    def encode(self, tensor):
        flat = tensor.detach().reshape(-1)
        k = max(1, math.ceil(self.fraction * flat.numel()))
        index = flat.abs().topk(k, sorted=False).indices
        return {"i": index.to(torch.int32), "v": flat[index].to(torch.float32)}

    def decode(self, parts, like):
        flat = torch.zeros(like.numel(), dtype=like.dtype)
        flat[parts["i"].long()] = parts["v"].to(like.dtype)
        return flat.reshape(like.shape)


def running_statistics(model: torch.nn.Module) -> set[str]:
    """Float state entries that are not parameters: BatchNorm's running means and variances."""
    params = {name for name, _ in model.named_parameters()}
    return {name for name, value in model.state_dict().items() if value.is_floating_point() and name not in params}


def build_codec(name: str, topk_fraction: float = 0.01, key: str = "federated.compression.uplink",
                options: Mapping[str, Any] | None = None) -> Codec:
    """The codec ``name`` names. A codec class with a ``from_options(**options)`` classmethod gets
    ``topk_fraction`` and the section's ``options`` (a user codec's own keys); it ignores the rest."""
    cls = CODECS.get(name, key)
    from_options = getattr(cls, "from_options", None)
    if from_options is None:
        return cls()
    return from_options(topk_fraction=topk_fraction, **dict(options or {}))


def encode_state(state: Mapping[str, torch.Tensor], codec: Codec) -> dict[str, torch.Tensor]:
    """Float tensors encoded part by part (``<name>#<part>``); other tensors as they are."""
    wire: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if tensor.is_floating_point():
            wire.update({f"{name}{SEP}{part}": value for part, value in codec.encode(tensor).items()})
        else:
            wire[name] = tensor
    return wire


def _parts(wire: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in wire.items():
        name, _, part = key.rpartition(SEP)
        if name:
            parts.setdefault(name, {})[part] = value
    return parts


def decode_state(wire: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor] | None,
                 codec: Codec) -> dict[str, torch.Tensor]:
    """The state ``encode_state`` encoded, shaped like ``reference``.

    With no ``reference`` (a base station decoding the downlink), every encoded tensor comes back
    as float32 in the shape its parts carry; codecs that need the shape (``topk``) need a reference.

    Raises:
        KeyError: a tensor of ``reference`` has no wire parts (a malformed upload).
    """
    parts = _parts(wire)
    if reference is None:
        out = {k: v for k, v in wire.items() if SEP not in k}
        for name, named_parts in parts.items():
            if isinstance(codec, TopK):
                raise ValueError("a top-k state cannot be decoded without the shapes of a reference state")
            shape_of = named_parts.get("q", named_parts.get("v"))
            if shape_of is None:
                raise KeyError(f"{name!r} has no 'q' or 'v' wire part to take its shape from (a malformed state)")
            out[name] = codec.decode(named_parts, torch.empty(shape_of.shape, dtype=torch.float32))
        return out
    return {name: codec.decode(parts[name], like) if like.is_floating_point() else wire[name]
            for name, like in reference.items()}


class UplinkCompression:
    """The base-station side of uplink compression: update, error feedback, wire.

    Args:
        codec: how each float tensor of the update is encoded.
        error_feedback: keep what compression dropped and add it to the next round's update.
        statistics: float entries that are running statistics, not trained weights (BatchNorm's
            running mean and variance). A sparse codec sends them whole, at full precision: a
            local fit overwrites them rather than adding to them, so a delayed residual would be
            added to a statistic that has since moved (measured: running variances went negative
            within 2 rounds and accuracy fell to chance). They are a few KB.
    """

    def __init__(self, codec: Codec, error_feedback: bool = True, statistics: Collection[str] = ()) -> None:
        self.codec, self.error_feedback = codec, error_feedback
        self.statistics = frozenset(statistics) if codec.sparse else frozenset()

    @property
    def active(self) -> bool:
        return not isinstance(self.codec, Identity)

    def encode(self, upload: Mapping[str, torch.Tensor], payload: Mapping[str, torch.Tensor],
               local_state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(wire, residuals)``: the encoded update and, with error feedback, the new residuals
        (``residual/<name>`` entries for the base station's local state)."""
        update = {}
        for name, tensor in upload.items():
            if tensor.is_floating_point():
                delta = tensor - payload[name]
                if self.error_feedback and RESIDUAL + name in local_state:
                    delta = delta + local_state[RESIDUAL + name]
                update[name] = delta
            else:
                update[name] = tensor
        dense = {n: update.pop(n) for n in self.statistics if n in update}
        wire = encode_state(update, self.codec)
        residuals = {}
        if self.error_feedback:
            sent = decode_state(wire, update, self.codec)
            residuals = {RESIDUAL + n: update[n] - sent[n] for n in update if update[n].is_floating_point()}
        return {**wire, **encode_state(dense, Identity())}, residuals

    def decode(self, wire: Mapping[str, torch.Tensor], payload: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The base station's new state: the payload plus the decoded update."""
        dense = {n: payload[n] for n in self.statistics if n in payload}
        update = decode_state(wire, {n: v for n, v in payload.items() if n not in dense}, self.codec)
        update.update(decode_state(wire, dense, Identity()))
        return {n: payload[n] + update[n] if payload[n].is_floating_point() else update[n] for n in payload}


def downlink_codec_names() -> list[str]:
    """The codecs the downlink may use: every dense one (see :class:`Compression`)."""
    return [name for name, cls in CODECS.items() if not cls.sparse]


class Compression:
    """Both directions of one experiment (the ``federated.compression`` section).

    The downlink takes dense codecs only: decoding a sparse (top-k) global update needs the
    previous global state, which base stations sampled out of a round lack.
    """

    def __init__(self, uplink: str = "none", downlink: str = "none", topk_fraction: float = 0.01,
                 error_feedback: bool = True, statistics: Collection[str] = (),
                 options: Mapping[str, Any] | None = None) -> None:
        self.uplink = UplinkCompression(build_codec(uplink, topk_fraction, options=options), error_feedback, statistics)
        self.downlink = build_codec(downlink, topk_fraction, key="federated.compression.downlink", options=options)
        if self.downlink.sparse:
            raise ConfigError(f"federated.compression.downlink={downlink!r} is not supported: decoding a sparse global "
                              "update needs the previous global state, which base stations sampled out of a round "
                              f"lack; choose one of {downlink_codec_names()} ({downlink} is an uplink codec)")

    @classmethod
    def from_config(cls, cfg, model: torch.nn.Module | None = None) -> Compression:
        """From the ``federated.compression`` section; ``model`` tells its running statistics apart."""
        if cfg is None:
            return cls()
        return cls(cfg.uplink, cfg.downlink, cfg.topk_fraction, cfg.error_feedback,
                   running_statistics(model) if model is not None else (), dict(cfg.get("options", None) or {}))

    @property
    def downlink_active(self) -> bool:
        return not isinstance(self.downlink, Identity)

    def send_down(self, payload: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(wire, what the base stations decode)`` for a payload."""
        if not self.downlink_active:
            return dict(payload), dict(payload)
        wire = encode_state(payload, self.downlink)
        return wire, decode_state(wire, payload, self.downlink)

    def receive_down(self, wire: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A base station's view of the downlink wire."""
        return dict(wire) if not self.downlink_active else decode_state(wire, None, self.downlink)


def check_config(cfg: Any) -> None:
    """``federated.compression``'s rules (called by :func:`fedaux.config.validate`): building it refuses
    an unknown codec, a bad option or a sparse codec on the downlink."""
    Compression.from_config(cfg.federated.compression)
