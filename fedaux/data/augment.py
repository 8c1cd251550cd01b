"""Traffic augmentations of windows, by name (``model.consistency.weak`` / ``strong``,
``model.heads.<task>.augment``).

An augmentation works on the model's input: a batch of windows ``x`` of shape ``(B, C, P)``
float32, ``P = data.packets`` packets and one channel per ``data.features`` entry, normalised as
:mod:`fedaux.data.features` says: ``iat`` = ``log1p(gap_us) / log1p(1e7)`` in ``[0, 1]``,
``signed_length`` = ``±length / 1500`` in ``[-1, 1]`` (the sign is the direction), ``elapsed`` =
``log1p(t_us) / log1p(1e9)`` in ``[0, 1]``. A window shorter than ``P`` packets ends in padding,
zero in every channel; a real packet never has length 0. Every augmentation returns a new tensor
of the same shape, dtype and device, keeps padding at the end, keeps at least one real packet
and keeps every channel in its range. Channels it does not know (a plug-in feature) move with
their packets and are otherwise left alone.

An augmentation is a function ``fn(x, layout, generator, **options) -> x'`` registered in
:data:`AUGMENTATIONS`; its options are keyword-only arguments with defaults, and it checks their
values itself (a ``ValueError`` naming the option). Every draw comes from ``generator`` (torch's
global generator when None), so a seeded generator repeats the output exactly. In config an
entry is a name or a mapping ``{name: packet_drop, p: 0.2}``; :func:`build_augmentation` turns a
list of them into one :class:`Augmentation`, applied in order.

Example:
    >>> aug = build_augmentation([{"name": "packet_drop", "p": 0.5}, "length_noise"],
    ...                          ["iat", "signed_length", "elapsed"], "model.consistency.strong")
    >>> x = torch.rand(4, 3, 60)
    >>> y = aug(x, torch.Generator().manual_seed(0))
    >>> y.shape, y.dtype
    (torch.Size([4, 3, 60]), torch.float32)
    >>> torch.equal(y, aug(x, torch.Generator().manual_seed(0)))
    True
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedaux.data.features import ELAPSED_SATURATION_US, IAT_SATURATION_US, MTU_BYTES
from fedaux.errors import ConfigError
from fedaux.registry import Registry

Generator = torch.Generator | None


@dataclass(frozen=True)
class ChannelLayout:
    """Which channel of a window holds which per-packet feature (``data.features``, in order)."""

    features: tuple[str, ...]

    def index(self, feature: str) -> int | None:
        return self.features.index(feature) if feature in self.features else None

    def require(self, feature: str, augmentation: str) -> int:
        """The channel of ``feature``; a ``ValueError`` when the windows do not have it."""
        index = self.index(feature)
        if index is None:
            raise ValueError(f"{augmentation} needs the {feature!r} feature in data.features (it has {list(self.features)})")
        return index


Augment = Callable[..., torch.Tensor]  # (x (B, C, P), layout, generator, **options) -> (B, C, P)
AUGMENTATIONS: Registry[Augment] = Registry("window augmentation", "model.consistency.strong")


# ------------------------------------------------------------------------------------------ helpers
def packet_mask(x: torch.Tensor, layout: ChannelLayout) -> torch.Tensor:
    """``(B, P)`` bool: which positions of each window hold a real packet (not padding).

    With a ``signed_length`` channel a real packet is one with a non-zero length; without one,
    every position up to the last with a non-zero channel, and always the first.

    Example:
        >>> x = torch.zeros(1, 3, 4)
        >>> x[0, 1, :2] = torch.tensor([0.1, -0.2])
        >>> packet_mask(x, ChannelLayout(("iat", "signed_length", "elapsed")))
        tensor([[ True,  True, False, False]])
    """
    length = layout.index("signed_length")
    if length is not None:
        return x[:, length] != 0
    positions = torch.arange(x.shape[-1], device=x.device)
    last = torch.where((x != 0).any(1), positions, 0).amax(1, keepdim=True)
    return positions <= last


def _exact(x: torch.Tensor) -> torch.dtype:
    """The dtype times and lengths are worked in: float64 (µs over minutes), float32 where the
    device has no float64 (Apple's MPS)."""
    return torch.float32 if x.device.type == "mps" else torch.float64


def _uniform(x: torch.Tensor, shape: Sequence[int], generator: Generator) -> torch.Tensor:
    return torch.rand(tuple(shape), generator=generator, device=x.device, dtype=_exact(x))


def _normal(x: torch.Tensor, shape: Sequence[int], generator: Generator) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=generator, device=x.device, dtype=_exact(x))


_LOG_IAT, _LOG_ELAPSED = math.log1p(IAT_SATURATION_US), math.log1p(ELAPSED_SATURATION_US)


def _gaps_us(iat: torch.Tensor) -> torch.Tensor:
    """Normalised inter-arrival channel -> microseconds (a saturated 1 reads as 1e7)."""
    return torch.expm1(iat.to(_exact(iat)) * _LOG_IAT)


def _iat(gaps_us: torch.Tensor) -> torch.Tensor:
    return (torch.log1p(gaps_us.clamp_min(0)) / _LOG_IAT).clamp(0, 1)


def _gather_packets(x: torch.Tensor, index: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``x[b, :, index[b, p]]`` where ``keep[b, p]``, padding (zeros) elsewhere."""
    moved = x.gather(2, index.clamp(0, x.shape[-1] - 1).unsqueeze(1).expand(-1, x.shape[1], -1))
    return torch.where(keep.unsqueeze(1), moved, torch.zeros((), dtype=x.dtype, device=x.device))


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


# ------------------------------------------------------------------------------------------ augmentations
@AUGMENTATIONS.register("window_shift")
def window_shift(x: torch.Tensor, layout: ChannelLayout, generator: Generator = None, *,
                 max_shift: int = 8) -> torch.Tensor:
    """The window cut up to ``max_shift`` packets later in its flow: each window loses its first
    ``s`` packets, ``s`` uniform in ``0 .. min(max_shift, packets - 1)``, and the rest move forward
    (padding where the flow's later packets would be: the window never saw them). Inter-arrival
    and elapsed values stay those of their packets, as in a window that starts later.
    """
    _check(isinstance(max_shift, int) and max_shift >= 0, f"max_shift={max_shift!r} must be an integer >= 0")
    real = packet_mask(x, layout)
    limit = (real.sum(1) - 1).clamp(0, max_shift)  # (B,) never shift every real packet out
    shift = (_uniform(x, [x.shape[0]], generator) * (limit + 1)).floor().long().clamp_max(limit)
    positions = torch.arange(x.shape[-1], device=x.device)
    index = positions + shift.unsqueeze(1)
    return _gather_packets(x, index, index < x.shape[-1])


@AUGMENTATIONS.register("packet_drop")
def packet_drop(x: torch.Tensor, layout: ChannelLayout, generator: Generator = None, *, p: float = 0.1) -> torch.Tensor:
    """Each real packet but the window's first is lost with probability ``p``, as a capture point
    that misses packets would: the others move forward and the window ends in more padding. The
    packet after a lost one carries the lost gap too (its inter-arrival is the sum of both);
    elapsed times stay those of the kept packets.
    """
    _check(0.0 <= p < 1.0, f"p={p!r} must be in [0, 1)")
    real = packet_mask(x, layout)
    dropped = real & (_uniform(x, real.shape, generator) < p)
    dropped[:, 0] = False
    kept = real & ~dropped
    out = x.clone()
    iat = layout.index("iat")
    if iat is not None:
        gaps = _gaps_us(x[:, iat])
        lost = torch.cumsum(torch.where(dropped, gaps, 0.0), dim=1)  # (B, P) lost gaps so far
        positions = torch.arange(x.shape[-1], device=x.device)
        last_kept = torch.cummax(torch.where(kept, positions, 0), dim=1).values
        previous = torch.cat([torch.zeros_like(last_kept[:, :1]), last_kept[:, :-1]], dim=1)
        carried = lost - lost.gather(1, previous)  # gaps lost since the previous kept packet
        merged = kept & (carried > 0)
        out[:, iat] = torch.where(merged, _iat(gaps + carried).to(x.dtype), x[:, iat])
    # Kept packets first, in order (a stable sort on "dropped or padding"), then padding.
    order = torch.sort((~kept).to(torch.uint8), dim=1, stable=True).indices
    count = kept.sum(1, keepdim=True)
    return _gather_packets(out, order, torch.arange(x.shape[-1], device=x.device) < count)


@AUGMENTATIONS.register("iat_jitter")
def iat_jitter(x: torch.Tensor, layout: ChannelLayout, generator: Generator = None, *,
               sigma: float = 0.1) -> torch.Tensor:
    """Every real packet's gap to its predecessor times ``exp(sigma * N(0, 1))``, as queueing delay
    would stretch or squeeze it; elapsed times (when a channel holds them) move by the change in
    the window's gaps so far, so the two channels stay consistent.
    """
    _check(sigma >= 0, f"sigma={sigma!r} must be >= 0")
    iat = layout.require("iat", "iat_jitter")
    real = packet_mask(x, layout)
    gaps = _gaps_us(x[:, iat])
    jittered = torch.where(real, gaps * torch.exp(sigma * _normal(x, real.shape, generator)), gaps)
    out = x.clone()
    out[:, iat] = torch.where(real, _iat(jittered).to(x.dtype), x[:, iat])
    elapsed = layout.index("elapsed")
    if elapsed is not None:
        since_start = torch.expm1(x[:, elapsed].to(_exact(x)) * _LOG_ELAPSED)
        moved = since_start + torch.cumsum(jittered - gaps, dim=1)
        value = (torch.log1p(moved.clamp_min(0)) / _LOG_ELAPSED).clamp(0, 1)
        out[:, elapsed] = torch.where(real, value.to(x.dtype), x[:, elapsed])
    return out


@AUGMENTATIONS.register("length_noise")
def length_noise(x: torch.Tensor, layout: ChannelLayout, generator: Generator = None, *,
                 std_bytes: float = 20.0) -> torch.Tensor:
    """Every real packet's length plus Gaussian noise of ``std_bytes`` bytes, rounded to whole
    bytes and kept in ``[1, 1500]`` (so a real packet stays non-zero); its direction is kept.
    """
    _check(std_bytes >= 0, f"std_bytes={std_bytes!r} must be >= 0")
    channel = layout.require("signed_length", "length_noise")
    signed = x[:, channel].to(_exact(x))
    real = signed != 0
    noisy = (signed.abs() * MTU_BYTES + std_bytes * _normal(x, real.shape, generator)).round().clamp(1, MTU_BYTES)
    out = x.clone()
    out[:, channel] = torch.where(real, (signed.sign() * noisy / MTU_BYTES).to(x.dtype), x[:, channel])
    return out


# ------------------------------------------------------------------------------------------ pipelines
@dataclass(frozen=True)
class Augmentation:
    """Augmentations applied in order: ``(B, C, P)`` -> ``(B, C, P)``.

    Attributes:
        steps: ``(name, function, options)`` per step.
        layout: the windows' channels.
    """

    steps: tuple[tuple[str, Augment, Mapping[str, Any]], ...]
    layout: ChannelLayout

    def __call__(self, x: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        for _, fn, options in self.steps:
            x = fn(x, self.layout, generator, **options)
        return x

    def __repr__(self) -> str:
        return "Augmentation(" + ", ".join(f"{n}({', '.join(f'{k}={v}' for k, v in o.items())})"
                                           for n, _, o in self.steps) + ")"


def _options(fn: Augment) -> dict[str, Any]:
    """An augmentation's options and their defaults (its keyword-only arguments)."""
    return {name: p.default for name, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}


def build_augmentation(specs: Sequence[Any], features: Sequence[str], key: str) -> Augmentation:
    """An :class:`Augmentation` from config entries (names or ``{name: ..., option: value}``).

    Every step is tried once on a small window, so a bad option value or a feature the windows
    lack stops here, not in the first local fit.

    Raises:
        ConfigError: naming ``key[i]``, the bad name, option or value, and what would be valid.
    """
    layout = ChannelLayout(tuple(features))
    steps = []
    for i, spec in enumerate(specs):
        where = f"{key}[{i}]"
        spec = dict(spec) if isinstance(spec, Mapping) else {"name": spec}
        name = spec.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"{where}={spec!r} needs a name: one of {AUGMENTATIONS.names()}")
        fn = AUGMENTATIONS.get(name, where)
        valid = _options(fn)
        for option, value in spec.items():
            if option not in valid:
                raise ConfigError(f"{where}.{option}: {name} has no option {option!r}; its options: {valid}")
            default = valid[option]
            if isinstance(value, bool) or not isinstance(value, int | float) or (isinstance(default, int)
                                                                                  and not isinstance(value, int)):
                kind = "an integer" if isinstance(default, int) else "a number"
                raise ConfigError(f"{where}.{option}={value!r}: {name}'s {option} must be {kind}")
        steps.append((name, fn, {k: v for k, v in spec.items()}))
    augmentation = Augmentation(tuple(steps), layout)
    probe = torch.zeros(2, len(layout.features), 4)
    probe[:, :, :3] = 0.5
    for i, (name, fn, options) in enumerate(augmentation.steps):
        try:
            fn(probe, layout, torch.Generator().manual_seed(0), **options)
        except ValueError as err:
            raise ConfigError(f"{key}[{i}] ({name}): {err}") from None
    return augmentation
