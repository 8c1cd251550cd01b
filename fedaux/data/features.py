"""Per-packet features and fixed-length windows ("subflows") cut from flows.

Each sample is a window of ``packets`` consecutive packets with one channel per configured
feature (``data.features``), each normalised to a fixed range:

* ``iat``, inter-arrival time: ``log1p(gap_us) / log1p(1e7)`` in ``[0, 1]``. The log keeps
  microsecond bursts and multi-second pauses apart on one scale; gaps of 10 s or more saturate at 1.
  Steps back in time from capture reordering count as a gap of 0.
* ``signed_length``: ``length / 1500`` clipped to ``[-1, 1]``, positive for direction 1 and
  negative for direction 0 (1500 bytes is the Ethernet MTU, the largest packet here).
* ``elapsed``, time since the flow's first packet: ``log1p(t_us) / log1p(1e9)`` in ``[0, 1]``
  (saturating at about 17 minutes). It tells the model where in the flow a window lies, which
  an observer of a live flow knows too.

A window shorter than ``packets`` (the flow ended) is padded with zeros in every channel; a real
packet never has length 0, so padding is unambiguous. New features register a function of the
flow collection returning one ``(P,)`` value per packet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fedaux.data.flows import FlowCollection
from fedaux.errors import ConfigError
from fedaux.registry import Registry

IAT_SATURATION_US = 1e7
ELAPSED_SATURATION_US = 1e9
MTU_BYTES = 1500.0

PacketFeature = Callable[[FlowCollection], np.ndarray]
PACKET_FEATURES: Registry[PacketFeature] = Registry("per-packet feature", "data.features")


@PACKET_FEATURES.register("iat")
def inter_arrival(flows: FlowCollection) -> np.ndarray:
    """clip(log1p(max(gap_us, 0)) / log1p(1e7), 0, 1), gap_us the microseconds since the flow's
    previous packet; 0 for its first packet."""
    gap = np.log1p(np.maximum(flows.iat_us, 0).astype(np.float64)) / np.log1p(IAT_SATURATION_US)
    gap[flows.offsets[:-1]] = 0.0  # nothing precedes a flow's first packet
    return np.clip(gap, 0.0, 1.0)


@PACKET_FEATURES.register("signed_length")
def signed_length(flows: FlowCollection) -> np.ndarray:
    """clip(sign * length / 1500, -1, 1), sign +1 for direction 1 (as the flow's first packet), -1 otherwise."""
    sign = np.where(flows.directions == 1, 1.0, -1.0)
    return np.clip(sign * flows.lengths.astype(np.float64) / MTU_BYTES, -1.0, 1.0)


@PACKET_FEATURES.register("elapsed")
def elapsed(flows: FlowCollection) -> np.ndarray:
    """clip(log1p(t_us) / log1p(1e9), 0, 1), t_us the microseconds since the flow's first packet
    (negative gaps counted as 0)."""
    # Cumulative gaps restarted at every flow: subtract each flow's running total at its start.
    gaps = np.maximum(flows.iat_us, 0).astype(np.float64)
    gaps[flows.offsets[:-1]] = 0.0
    total = np.cumsum(gaps)
    since_start = total - np.repeat(total[flows.offsets[:-1]], np.diff(flows.offsets))
    return np.clip(np.log1p(since_start) / np.log1p(ELAPSED_SATURATION_US), 0.0, 1.0)


DEFAULT_FEATURES = ("iat", "signed_length", "elapsed")


def packet_features(flows: FlowCollection, names: Sequence[str] = DEFAULT_FEATURES) -> np.ndarray:
    """Normalised features of every packet in the collection.

    Returns:
        ``(C, P)`` float32, one row per feature name, in the given order.
    """
    unknown = [n for n in names if n not in PACKET_FEATURES]
    if unknown or not names:
        raise ConfigError(f"data.features={list(names)}: unknown {unknown}; choose from {PACKET_FEATURES.names()}")
    return np.stack([PACKET_FEATURES.get(n)(flows) for n in names]).astype(np.float32)


def short_flows_note(flows: FlowCollection, min_packets: int) -> str:
    """How many flows have fewer than ``min_packets`` packets (no window is cut from them), per
    class; ``""`` when none has.

    Example:
        >>> from fedaux.data.reader import ParsedFlow
        >>> one = ParsedFlow(0.0, np.zeros(1), np.array([60]), np.ones(1, np.uint8))
        >>> ten = ParsedFlow(0.0, np.arange(10.0), np.full(10, 60), np.ones(10, np.uint8))
        >>> flows = FlowCollection.from_parsed([one, ten, one], [0, 0, 1], ["a/1", "a/2", "b/1"], ["a", "b"])
        >>> short_flows_note(flows, 10)
        '2 of 3 flows have fewer than data.min_packets=10 packets (a: 1, b: 1; no flow of b is left)'
    """
    short = flows.packet_counts() < min_packets
    if not short.any():
        return ""
    per_class = np.bincount(flows.labels[short], minlength=len(flows.class_names))
    totals = np.bincount(flows.labels, minlength=len(flows.class_names))
    counts = ", ".join(f"{name}: {int(n)}" for name, n in zip(flows.class_names, per_class) if n)
    emptied = [name for name, n, total in zip(flows.class_names, per_class, totals) if total and n == total]
    return (f"{int(short.sum())} of {flows.num_flows} flows have fewer than data.min_packets={min_packets} packets "
            f"({counts}" + (f"; no flow of {', '.join(emptied)} is left" if emptied else "") + ")")


@dataclass(frozen=True)
class Windows:
    """Samples cut from flows.

    Attributes:
        x: ``(N, C, packets)`` float32 features.
        flow_index: ``(N,)`` int64 index of the flow each window came from.
        dropped_flows: names of flows left out for having fewer than ``min_packets`` packets.
    """

    x: np.ndarray
    flow_index: np.ndarray
    dropped_flows: tuple[str, ...]


def cut_windows(
    flows: FlowCollection,
    flow_indices: np.ndarray,
    packets: int,
    subflows_per_flow: int,
    min_packets: int,
    rng: np.random.Generator,
    features: np.ndarray | None = None,
) -> Windows:
    """Cut ``subflows_per_flow`` windows from each chosen flow.

    The first window starts at the flow's first packet; the others start at uniform random
    offsets in ``[0, n - packets]`` (drawn from ``rng``). A flow with at most ``packets`` packets
    yields only its first window, since every other offset would repeat it.

    Args:
        flow_indices: ``(K,)`` flows to cut from.
        features: precomputed ``(C, P)`` :func:`packet_features` output, to avoid recomputing it
            per split; the default features when None.
    """
    if packets < 1 or subflows_per_flow < 1:
        raise ValueError(f"packets={packets} and subflows_per_flow={subflows_per_flow} must both be >= 1")
    features = packet_features(flows) if features is None else features
    counts = flows.packet_counts()
    keep = np.asarray([i for i in flow_indices if counts[i] >= min_packets], dtype=np.int64)
    dropped = tuple(flows.flow_names[i] for i in flow_indices if counts[i] < min_packets)

    starts, owners = [], []
    for flow in keep:  # one small draw per flow; the packet gather below is vectorised
        n = int(counts[flow])
        extra: np.ndarray | list[int] = rng.integers(0, n - packets + 1, size=subflows_per_flow - 1) if n > packets else []
        offsets = np.concatenate(([0], extra)).astype(np.int64)
        starts.append(flows.offsets[flow] + offsets)
        owners.append(np.full(len(offsets), flow, dtype=np.int64))
    if not starts:
        return Windows(np.zeros((0, features.shape[0], packets), np.float32), np.zeros(0, np.int64), dropped)
    start = np.concatenate(starts)
    owner = np.concatenate(owners)
    index = start[:, None] + np.arange(packets)[None, :]  # (N, packets) packet positions
    valid = index < flows.offsets[owner + 1][:, None]
    x = features[:, np.where(valid, index, 0)]  # (C, N, packets)
    x = np.where(valid[None], x, 0.0).transpose(1, 0, 2)
    return Windows(np.ascontiguousarray(x, dtype=np.float32), owner, dropped)
