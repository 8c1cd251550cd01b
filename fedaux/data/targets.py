"""Task targets derived from whole flows, by small named functions in a registry.

A target function takes a :class:`~fedaux.data.flows.FlowView` and returns one number. With
``bins`` the number is binned into ``len(bins) + 1`` classes (``np.digitize``: class ``k`` holds
values in ``[bins[k-1], bins[k])``). Users add a target by config alone, naming a function by
import path::

    data:
      targets:
        upload_ratio: {fn: "my_pkg.targets:upload_ratio", bins: [0.1, 0.5]}
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedaux.data.flows import FlowCollection, FlowView
from fedaux.errors import ConfigError, DataError
from fedaux.labels import IGNORE_INDEX
from fedaux.registry import Registry

TargetFn = Callable[[FlowView], float]
# The stores' time resolution (times are whole microseconds): the shortest duration a clock
# reading can tell from zero, and the floor of the duration that bandwidth divides by.
TIME_RESOLUTION_S = 1e-6
TARGET_FUNCTIONS: Registry[TargetFn] = Registry("target function", "data.targets.<name>.fn", allow_import_path=True)


@TARGET_FUNCTIONS.register("traffic_class")
def traffic_class(flow: FlowView) -> float:
    """The service that made the flow: its class folder."""
    return flow.label


@TARGET_FUNCTIONS.register("bandwidth")
def bandwidth(flow: FlowView) -> float:
    """Mean throughput in bytes per second: ``bytes / max(duration, 1e-6)``.

    The flow's bytes over its :func:`duration`, the duration floored at the store's time resolution
    (:data:`TIME_RESOLUTION_S`, 1 us). A flow of one packet, or of packets sharing one timestamp,
    lasts 0 s as far as the clock can tell, so its bandwidth is its bytes over 1 us: as fast as the
    clock can tell, finite, and above every flow that lasts longer with the same bytes. A flow
    lasting 1 us or more keeps ``bytes / duration`` exactly.

    Example:
        >>> one = FlowView(np.zeros(1), np.array([1200]), np.ones(1, np.uint8), 0, "a", "a/f1")
        >>> duration(one), bandwidth(one)
        (0.0, 1200000000.0)
        >>> two = FlowView(np.array([0.0, 0.5]), np.array([1000, 500]), np.ones(2, np.uint8), 0, "a", "a/f2")
        >>> bandwidth(two)
        3000.0
    """
    return float(flow.lengths.sum()) / max(_duration(flow), TIME_RESOLUTION_S)


@TARGET_FUNCTIONS.register("duration")
def duration(flow: FlowView) -> float:
    """Seconds from the first to the last packet: 0.0 for a flow of one packet or of packets sharing
    one timestamp (and for a last packet recorded before the first, a capture reordering)."""
    return _duration(flow)


@TARGET_FUNCTIONS.register("upload_fraction")
def upload_fraction(flow: FlowView) -> float:
    """Share of the flow's bytes sent in direction 1."""
    return float(flow.lengths[flow.directions == 1].sum()) / max(float(flow.lengths.sum()), 1.0)


@TARGET_FUNCTIONS.register("random_uniform")
def random_uniform(flow: FlowView) -> float:
    """A number in [0, 1) drawn per flow from its name alone: a target unrelated to the traffic.

    With ``bins`` it gives random class labels per flow, the "unrelated auxiliary task" of the
    ablation (``conf/ablation/``): it shows whether an auxiliary head that carries no information
    hurts the main task (negative transfer), and whether a weighting protects against that.

    Example:
        >>> view = FlowView(np.zeros(1), np.zeros(1, np.int64), np.zeros(1, np.uint8), 0, "a", "a/f1")
        >>> random_uniform(view) == random_uniform(view), 0 <= random_uniform(view) < 1
        (True, True)
    """
    # crc32 of the name, not Python's hash(): the same value in every process and on every machine.
    return zlib.crc32(flow.name.encode()) / 2**32


def _duration(flow: FlowView) -> float:
    return max(float(flow.times[-1] - flow.times[0]), 0.0)


def resolve_target_fn(spec: str, key: str = "fn") -> TargetFn:
    """A registry name (``"bandwidth"``) or an import path (``"pkg.module:function"``)."""
    if ":" not in spec and spec not in TARGET_FUNCTIONS:
        raise ConfigError(f"{key}={spec!r} is not a known target; valid names: {TARGET_FUNCTIONS.names()} "
                          "or an import path 'package.module:function'")
    fn = TARGET_FUNCTIONS.get(spec, key)
    if not callable(fn):
        raise ConfigError(f"{key}={spec!r} is not callable; a target function takes a FlowView and returns a number")
    return fn


@dataclass(frozen=True)
class TargetValues:
    """A target computed for every flow.

    Attributes:
        values: ``(F,)`` int64 class indices (classification) or float32 values (regression).
        num_classes: number of classes, or 0 for a regression target.
        class_names: a name per class (bin ranges for binned targets).
    """

    name: str
    values: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]

    @property
    def is_classification(self) -> bool:
        return self.num_classes > 0

    def without_classes(self, names: Sequence[str]) -> TargetValues:
        """The same target with the classes ``names`` left out: the others renumbered ``0..K'-1`` in
        their order, flows of a left-out class valued :data:`~fedaux.labels.IGNORE_INDEX`.

        Example:
            >>> t = TargetValues("traffic_class", np.array([0, 1, 2, 1]), 3, ("a", "b", "c"))
            >>> kept = t.without_classes(["b"])
            >>> kept.values.tolist(), kept.class_names
            ([0, -100, 1, -100], ('a', 'c'))

        Raises:
            ConfigError: a name that is not one of the classes (the valid ones listed), or every
                class left out.
        """
        if not self.is_classification:
            raise ConfigError(f"data.exclude_classes: the main target {self.name!r} is not a classification target")
        unknown = [n for n in names if n not in self.class_names]
        if unknown:
            raise ConfigError(f"data.exclude_classes: {unknown} not class(es) of {self.name!r}; valid: "
                              f"{list(self.class_names)}")
        kept = [k for k, n in enumerate(self.class_names) if n not in set(names)]
        if not kept:
            raise ConfigError(f"data.exclude_classes={list(names)} leaves no class of {self.name!r} to train on")
        index = np.full(self.num_classes, IGNORE_INDEX, dtype=np.int64)
        index[kept] = np.arange(len(kept))
        return TargetValues(self.name, index[self.values], len(kept), tuple(self.class_names[k] for k in kept))


def raw_target_values(name: str, fn_spec: str, flows: FlowCollection) -> np.ndarray:
    """``(F,)`` float64: one target function's value for every flow, before any binning.

    Raises:
        DataError: the function gave NaN or an infinity for a flow (named).
    """
    fn = resolve_target_fn(fn_spec, key=f"data.targets.{name}.fn")
    raw = np.array([fn(flows.flow(i)) for i in range(flows.num_flows)], dtype=np.float64)
    if not np.isfinite(raw).all():
        bad = flows.flow_names[int(np.flatnonzero(~np.isfinite(raw))[0])]
        raise DataError(f"target {name!r} ({fn_spec}) gave a non-finite value for flow {bad!r}")
    return raw


def quantile_bins(values: np.ndarray, classes: int) -> list[float]:
    """Bin edges that split ``values`` into ``classes`` classes of about equal size (terciles for 3,
    quartiles for 4), each rounded to the fewest significant digits (3 or more) that still put
    every value in the class the exact quantiles put it in, so they read well in a config.

    Tied values can make quantiles coincide; repeated edges, and an edge at the smallest value (it
    would leave the first class empty), are dropped, so fewer than ``classes - 1`` edges may come
    back (none when every value is the same).

    Example:
        >>> quantile_bins(np.arange(1, 101, dtype=float), 4)
        [25.8, 50.5, 75.2]
        >>> quantile_bins(np.array([0.0, 0.0, 0.0, 2.0]), 4)
        [0.5]
    """
    values = np.asarray(values, dtype=np.float64)
    if classes < 2 or len(values) == 0:
        return []
    edges = np.unique(np.quantile(values, np.arange(1, classes) / classes))
    edges = edges[edges > values.min()]
    exact = np.digitize(values, edges)
    for digits in range(3, 18):
        rounded = [float(np.format_float_positional(e, precision=digits, unique=False, fractional=False, trim="-"))
                   for e in edges]
        if np.all(np.diff(rounded) > 0) and np.array_equal(np.digitize(values, rounded), exact):
            return rounded
    return edges.tolist()


def compute_target(name: str, fn_spec: str, bins: Sequence[float] | None, flows: FlowCollection) -> TargetValues:
    """Evaluate one target on every flow and bin it if ``bins`` is given."""
    fn = resolve_target_fn(fn_spec, key=f"data.targets.{name}.fn")
    raw = raw_target_values(name, fn_spec, flows)
    if fn is traffic_class:
        return TargetValues(name, raw.astype(np.int64), len(flows.class_names), flows.class_names)
    if bins:
        edges = np.asarray(bins, dtype=np.float64)
        if np.any(np.diff(edges) <= 0):
            raise ConfigError(f"data.targets.{name}.bins={list(bins)} must be strictly increasing")
        labels = [f"<{edges[0]:g}"] + [f"[{a:g},{b:g})" for a, b in zip(edges[:-1], edges[1:])] + [f">={edges[-1]:g}"]
        return TargetValues(name, np.digitize(raw, edges).astype(np.int64), len(edges) + 1, tuple(labels))
    return TargetValues(name, raw.astype(np.float32), 0, ())


def compute_targets(specs: Mapping[str, Mapping], flows: FlowCollection) -> dict[str, TargetValues]:
    """Compute every configured target: ``{name: {"fn": ..., "bins": [...]}}``."""
    return {name: compute_target(name, spec.get("fn") or name, spec.get("bins"), flows) for name, spec in specs.items()}
