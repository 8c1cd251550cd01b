"""Streaming prediction: the flows of a live capture classified while their packets arrive.

``tcpdump -w - | fedaux-predict RUN --data -`` feeds a pcap or pcapng stream through
:class:`~fedaux.data.capture.CaptureDecoder` batch by batch. A :class:`FlowTable` follows the
active flows (a flow is one 5-tuple's packets until a gap longer than
``data.capture.idle_timeout_s``, as :func:`~fedaux.data.capture.split_flows` cuts a file) and says
when a row is due; :class:`StreamPredictor` cuts the rows' windows with the run's features and
classifies them with the run's model.

Two rows per flow, chosen by ``emit``:

* ``first``: as soon as the flow has ``data.packets`` packets (and ``data.min_packets``, if that
  is more), from its first window alone, exactly the window the file path cuts first.
* ``final``: when the flow ends (idle longer than the timeout in capture time, a new packet of its
  5-tuple after such a gap, or the end of the stream), from as many windows as the file path uses:
  the first window and, for a flow longer than ``data.packets``, ``subflows_per_flow - 1`` windows
  at uniform random starts in ``[0, n - packets]``. Those starts are drawn while the flow is
  still arriving, by one size-1 reservoir sampler per window (so the windows have the file
  path's distribution without keeping the flow), from a generator seeded with the run's seed and
  the flow's name: the same stream gives the same rows, though not the same draws as the file
  path, whose generator runs over all flows of a file in order.

Memory is bounded by the active flows: per flow its first window's packets (at most
``packets``), and, while a final row is wanted and ``subflows_per_flow > 1``, the last
``packets + 1`` packets and each sampler's window (``packets + 1`` packets); ended flows are
dropped after their final row, and under ``emit="first"`` a flow keeps only its clock once its
first row is out.
"""

from __future__ import annotations

import csv
import json
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

import numpy as np

from fedaux.data.capture import CaptureDecoder, CaptureReport, PacketColumns, flow_name
from fedaux.data.features import cut_windows, packet_features
from fedaux.data.flow_filter import compile_filter
from fedaux.data.flows import FlowCollection
from fedaux.data.reader import FlowFormatError
from fedaux.errors import ConfigError

if TYPE_CHECKING:
    from fedaux.inference import Predictor, UnknownRule

# torch (through fedaux.inference and fedaux.data.samples) is imported when a table or predictor is
# made, not with this module: the command line reads EMIT to parse its arguments.

EMIT = ("first", "final", "both")
STDIN = "<stdin>"
# Columns of a packet record: capture time (µs), length, direction (1: sent like the flow's first
# packet), and the ``elapsed`` feature's clock (µs since the flow's start, backward steps counted 0).
TIME, SIZE, DIRECTION, ELAPSED = range(4)
_NEVER = np.iinfo(np.int64).max // 2


@dataclass
class Due:
    """A row that is due: which flow, which kind, and the packets its windows are cut from.

    Attributes:
        flow: the flow's name (:func:`~fedaux.data.capture.flow_name`).
        kind: ``"first"`` or ``"final"``.
        packets: the flow's packets when the row fell due.
        windows: one ``(m, 4)`` int64 packet record array per window (columns ``TIME, SIZE,
            DIRECTION, ELAPSED``): the flow's first ``m <= packets`` packets, or, for a window
            further in, the packet before it followed by its ``packets`` packets.
        starts: the position in the flow of each window's first packet (0: the first window).
    """

    flow: str
    kind: str
    packets: int
    windows: list[np.ndarray]
    starts: list[int]


@dataclass(eq=False)
class _Flow:
    name: str
    first_forward: int
    last_us: int
    keep: bool  # False: left out by data.capture.filter, followed only to know where it ends
    packets: int = 0
    elapsed_us: int = 0
    head: np.ndarray | None = None  # (<= packets, 4) the first window's packets
    recent: np.ndarray | None = None  # (<= packets + 1, 4) the last packets, where sampled windows come from
    starts: np.ndarray | None = None  # (k - 1,) int64 each sampler's window start
    picks: list[np.ndarray | None] = field(default_factory=list)  # each sampler's (packets + 1, 4) window
    next_start: np.ndarray | None = None  # (k - 1,) the start at which each sampler next replaces its window
    next_min: int = 0  # the smallest of next_start: before it no sampler has anything to do
    rng: np.random.Generator | None = None
    first_due: bool = False


class FlowTable:
    """The active flows of one capture stream, fed :class:`PacketColumns` batch by batch.

    Args:
        decoder: the decoder the batches come from (its 5-tuple table names the flows).
        packets: window length (``data.packets``).
        min_packets: a flow with fewer packets gets no row (``data.min_packets``).
        subflows_per_flow: windows per flow in a final row (``data.subflows_per_flow``).
        seed: the run's seed, for the final rows' window starts.
        idle_timeout_s: a flow ends after this much capture time without a packet.
        emit: ``"first"``, ``"final"`` or ``"both"`` (module docstring).
        flow_filter: ``data.capture.filter``.
        capture: the capture's name in flow names.

    Example:
        >>> table = FlowTable(CaptureDecoder(), packets=60, min_packets=10, subflows_per_flow=4, seed=0,
        ...                   idle_timeout_s=60.0)
        >>> table.active, table.finish()
        (0, [])
    """

    def __init__(self, decoder: CaptureDecoder, *, packets: int, min_packets: int, subflows_per_flow: int, seed: int,
                 idle_timeout_s: float, emit: str = "both", flow_filter: str = "", capture: str = STDIN) -> None:
        if emit not in EMIT:
            raise ConfigError(f"emit={emit!r} is not valid; choose one of {list(EMIT)}")
        if not idle_timeout_s > 0:
            raise ConfigError(f"data.capture.idle_timeout_s={idle_timeout_s} must be > 0")
        if packets < 1 or subflows_per_flow < 1:
            raise ConfigError(f"data.packets={packets} and data.subflows_per_flow={subflows_per_flow} must be >= 1")
        self.decoder, self.capture, self.emit = decoder, capture, emit
        self.packets, self.min_packets, self.seed = int(packets), int(min_packets), int(seed)
        self.samplers = int(subflows_per_flow) - 1 if emit != "first" else 0
        self.threshold = max(self.packets, self.min_packets)  # the packet at which a first row falls due
        self.timeout_us = int(round(idle_timeout_s * 1e6))
        self.clock_us: int | None = None  # the latest capture time seen
        self.ended = self.short = 0  # flows ended; of those, flows shorter than min_packets
        self._keep = compile_filter(flow_filter)
        from fedaux.data.samples import stream

        self._stream = stream
        # By key, least recently fed first: eviction walks from the front.
        self._flows: OrderedDict[int, _Flow] = OrderedDict()

    @property
    def active(self) -> int:
        """Flows held now."""
        return len(self._flows)

    @property
    def held_packets(self) -> int:
        """Packet records held for the active flows (first windows, last packets, sampled windows):
        at most ``packets + subflows_per_flow * (packets + 1)`` per flow, however long it is."""
        return sum((0 if f.head is None else len(f.head)) + (0 if f.recent is None else len(f.recent))
                   + sum(len(p) for p in f.picks if p is not None) for f in self._flows.values())

    def feed(self, cols: PacketColumns) -> list[Due]:
        """Add a batch of packets; the rows that fell due, flows ended by idleness included."""
        due: list[Due] = []
        n = len(cols.time_us)
        if n == 0:
            return due
        order = np.argsort(cols.key, kind="stable")  # each 5-tuple's packets together, in capture order
        keys = cols.key[order]
        # The batch's packet records at once; each flow's slice gets its direction and clock below.
        records = np.empty((n, 4), dtype=np.int64)
        records[:, TIME] = cols.time_us[order]
        records[:, SIZE] = np.minimum(cols.size[order], 65535)
        records[:, DIRECTION] = cols.forward[order]
        records[0, ELAPSED] = 0
        np.subtract(records[1:, TIME], records[:-1, TIME], out=records[1:, ELAPSED])  # gaps, fixed at each start
        idle = np.flatnonzero(records[1:, ELAPSED] > self.timeout_us) + 1
        bounds = np.flatnonzero(keys[1:] != keys[:-1]) + 1
        lo, hi = np.concatenate(([0], bounds)), np.concatenate((bounds, [n]))
        # 5-tuples in the order of their last packet, so the table stays roughly in order of last activity.
        for g in np.argsort(order[hi - 1]).tolist():
            a, b = int(lo[g]), int(hi[g])
            cuts = idle[np.searchsorted(idle, a + 1):np.searchsorted(idle, b)].tolist()
            self._feed_key(int(keys[a]), records, [a, *cuts], [*cuts, b], due)
        latest = int(cols.time_us.max())
        self.clock_us = latest if self.clock_us is None else max(self.clock_us, latest)
        self._evict(due)
        return due

    def finish(self) -> list[Due]:
        """End of stream: every active flow ends."""
        due: list[Due] = []
        while self._flows:
            self._end(next(iter(self._flows)), due)
        return due

    # ------------------------------------------------------------------------------------------
    def _feed_key(self, key: int, records: np.ndarray, starts: list[int], ends: list[int], due: list[Due]) -> None:
        """One 5-tuple's packets ``records[starts[0]:ends[-1]]``, cut where it was idle too long."""
        flow = self._flows.get(key)
        if flow is not None and int(records[starts[0], TIME]) - flow.last_us > self.timeout_us:
            self._end(key, due)
            flow = None
        for k, (a, b) in enumerate(zip(starts, ends)):
            if k:
                self._end(key, due)
            if k or flow is None:
                flow = self._open(key, int(records[a, TIME]), int(records[a, DIRECTION]))
            assert flow is not None
            self._append(flow, records[a:b], due)
        self._flows.move_to_end(key)

    def _open(self, key: int, start_us: int, forward: int) -> _Flow:
        flow_key = self.decoder.flow_key(key, bool(forward))
        keep = self._keep(flow_key)
        if not keep:
            self.decoder.report.filtered_flows += 1
        flow = self._flows[key] = _Flow(flow_name(self.capture, flow_key, start_us), forward, start_us, keep)
        return flow

    def _append(self, flow: _Flow, records: np.ndarray, due: list[Due]) -> None:
        """``records``: ``(m, 4)``, a view of the batch's records with the raw ``forward`` bit as
        direction and the gap to the previous packet of the 5-tuple as elapsed (0 at the batch's
        first); completed here in place."""
        n0, n1 = flow.packets, flow.packets + len(records)
        needed = flow.keep and not (self.emit == "first" and flow.first_due)
        if needed:
            if not flow.first_forward:  # direction 1: sent like the flow's first packet
                np.subtract(1, records[:, DIRECTION], out=records[:, DIRECTION])
            elapsed = records[:, ELAPSED]
            elapsed[0] = int(records[0, TIME]) - flow.last_us if n0 else 0
            np.maximum(elapsed, 0, out=elapsed)  # a step back in time counts 0, as in the file path
            np.cumsum(elapsed, out=elapsed)
            elapsed += flow.elapsed_us
            if n0 < self.packets:
                part = records[:self.packets - n0]
                flow.head = part.copy() if flow.head is None else np.concatenate([flow.head, part])
            if self.samplers:
                self._sample(flow, records, n0, n1)
            flow.elapsed_us = int(elapsed[-1])
        flow.packets, flow.last_us = n1, int(records[-1, TIME])
        if needed and not flow.first_due and n1 >= self.threshold:
            flow.first_due = True
            if self.emit != "final":
                due.append(Due(flow.name, "first", self.threshold, [flow.head], [0]))  # type: ignore[list-item]
            if self.emit == "first":  # nothing more to cut from this flow
                flow.head = flow.recent = None

    def _sample(self, flow: _Flow, records: np.ndarray, n0: int, n1: int) -> None:
        """Reservoir sampling of window starts: after ``n`` packets each sampler holds a uniform
        draw from ``[0, n - packets]``. A size-1 reservoir that last replaced at start ``c``
        keeps it through start ``m`` with probability ``(c + 1) / (m + 1)``, so its next
        replacement is drawn at once, ``floor((c + 1) / u)`` for ``u`` uniform in ``(0, 1]``."""
        keep = self.packets + 1  # the last packets a later window may start in, with the one before
        last = n1 - self.packets  # the last window start complete now
        if last >= flow.next_min:
            held = flow.recent if flow.recent is not None else records[:0]
            buffer = np.concatenate([held, records])  # packets base .. n1 - 1
            base = n0 - len(held)
            if flow.rng is None:
                flow.rng = self._stream(self.seed, "windows_test", zlib.crc32(flow.name.encode()))
                flow.starts = np.zeros(self.samplers, dtype=np.int64)
                flow.next_start = np.zeros(self.samplers, dtype=np.int64)
                flow.picks = [None] * self.samplers
            assert flow.starts is not None and flow.next_start is not None
            chosen = np.full(self.samplers, -1, dtype=np.int64)
            moving = flow.next_start <= last
            while moving.any():
                replaced = flow.next_start[moving]
                chosen[moving] = replaced
                u = 1.0 - flow.rng.random(len(replaced))
                flow.next_start[moving] = np.minimum(np.floor((replaced + 1) / u), _NEVER).astype(np.int64)
                moving = flow.next_start <= last
            flow.next_min = int(flow.next_start.min())
            for j in np.flatnonzero(chosen >= 0).tolist():
                start = int(chosen[j])
                flow.starts[j] = start
                # Start 0 is the first window (the head); a window further in keeps the packet before it.
                flow.picks[j] = buffer[start - 1 - base:start + self.packets - base].copy() if start else None
            flow.recent = buffer[-keep:].copy()
        elif len(records) >= keep or flow.recent is None:
            flow.recent = records[-keep:].copy()
        else:
            flow.recent = np.concatenate([flow.recent[len(records) - keep:], records])

    def _end(self, key: int, due: list[Due]) -> None:
        flow = self._flows.pop(key)
        self.ended += 1
        if not flow.keep:
            return
        if flow.packets < self.min_packets:
            self.short += 1
            return
        if self.emit == "first" and flow.first_due:
            return
        assert flow.head is not None
        windows, starts = [flow.head], [0]
        if flow.packets > self.packets and self.samplers:
            assert flow.starts is not None
            windows += [flow.head if pick is None else pick for pick in flow.picks]
            starts += flow.starts.tolist()
        due.append(Due(flow.name, "final", flow.packets, windows, starts))

    def _evict(self, due: list[Due]) -> None:
        assert self.clock_us is not None
        limit = self.clock_us - self.timeout_us  # idle longer than the timeout: last packet before this
        while self._flows:
            key, flow = next(iter(self._flows.items()))
            if flow.last_us >= limit:
                break
            self._end(key, due)
            self.decoder.forget(key)  # the decoder's 5-tuple table stays as small as this one


def window_inputs(windows: Sequence[np.ndarray], features: Sequence[str], packets: int) -> np.ndarray:
    """Model inputs ``(N, C, packets)`` float32 from ``N`` packet record arrays (:class:`Due`).

    A record array of at most ``packets`` rows is a flow's start; one of ``packets + 1`` rows is
    the packet before a window and the window. The features are the registry's
    (:func:`~fedaux.data.features.packet_features`), computed on a collection where each window
    is preceded by two stand-ins: a first packet at the flow's start and the packet before the
    window, ``elapsed`` µs later, so the window's ``iat`` and ``elapsed`` are those of the whole
    flow; then :func:`~fedaux.data.features.cut_windows` cuts and pads them as the file path does.
    A plug-in feature that reads further back than the previous packet and the flow's start sees
    only these.
    """
    iat, size, direction, context = [], [], [], []
    for rec in windows:
        gaps = np.diff(rec[:, TIME], prepend=rec[0, TIME])
        if len(rec) > packets:  # [stand-in start, packet before, window]
            iat.append(np.concatenate(([0, rec[0, ELAPSED]], gaps[1:])))
            size.append(np.concatenate((rec[:1, SIZE], rec[:, SIZE])))
            direction.append(np.concatenate((rec[:1, DIRECTION], rec[:, DIRECTION])))
            context.append(2)
        else:
            iat.append(gaps)
            size.append(rec[:, SIZE])
            direction.append(rec[:, DIRECTION])
            context.append(0)
    counts = np.array([len(a) for a in iat], dtype=np.int64)
    with_context = _collection(np.concatenate(iat), np.concatenate(size), np.concatenate(direction), counts)
    values = packet_features(with_context, list(features))
    skip = np.zeros(len(values[0]), dtype=bool)
    for offset, c in zip(with_context.offsets[:-1].tolist(), context):
        skip[offset:offset + c] = True
    bare = _collection(with_context.iat_us[~skip], with_context.lengths[~skip], with_context.directions[~skip],
                       counts - np.asarray(context))
    return cut_windows(bare, np.arange(len(counts)), packets, 1, 1, np.random.default_rng(0), values[:, ~skip]).x


def _collection(iat_us: np.ndarray, lengths: np.ndarray, directions: np.ndarray, counts: np.ndarray) -> FlowCollection:
    flows = len(counts)
    return FlowCollection(class_names=("stream",), flow_names=tuple(map(str, range(flows))),
                          labels=np.zeros(flows, np.int64), offsets=np.concatenate(([0], np.cumsum(counts))),
                          iat_us=iat_us.astype(np.int64), lengths=lengths.astype(np.uint16),
                          directions=directions.astype(np.uint8), unix_start=np.zeros(flows))


class StreamPredictor:
    """A trained model applied to one capture stream: packet batches in, rows out.

    Args:
        spec: :func:`~fedaux.inference.model_spec` or an exported model's metadata.
        predictor: windows ``(N, C, packets)`` -> ``{task: (N, K)}`` probabilities.
        idle_timeout_s, emit, flow_filter, capture: as :class:`FlowTable`.
        min_confidence, top: as :func:`~fedaux.inference.prediction`.
        unknown: the unknown score every row shows (``unknown_score``) and the threshold above
            which the flow is ``unknown`` (:class:`~fedaux.inference.UnknownRule`); a score that
            reads logits or features needs a predictor that gives them. None: no such column.

    A row is ``flow``, ``row`` (``first`` or ``final``), ``packets`` (the flow's packets when
    the row fell due), ``windows``, then :func:`~fedaux.inference.prediction`'s columns: a
    file's rows with two columns more.
    """

    def __init__(self, spec: Mapping[str, Any], predictor: Predictor, *, idle_timeout_s: float, emit: str = "both",
                 min_confidence: float = 0.0, top: int = 3, flow_filter: str = "", capture: str = STDIN,
                 unknown: UnknownRule | None = None) -> None:
        from fedaux.inference import flow_predictions, prediction, prediction_columns

        self._predictions, self._prediction, self._columns = flow_predictions, prediction, prediction_columns
        self.spec, self.predictor, self.capture = spec, predictor, capture
        self.min_confidence, self.top, self.unknown = min_confidence, top, unknown
        windowing = spec["windowing"]
        self.decoder = CaptureDecoder(length=spec["packet_length"], report=CaptureReport())
        self.table = FlowTable(self.decoder, packets=int(spec["packets"]), min_packets=int(windowing["min_packets"]),
                               subflows_per_flow=int(windowing["subflows_per_flow"]), seed=int(windowing["seed"]),
                               idle_timeout_s=idle_timeout_s, emit=emit, flow_filter=flow_filter, capture=capture)
        self.counts = {"first": 0, "final": 0}

    @property
    def columns(self) -> list[str]:
        return ["flow", "row", "packets", "windows", *self._columns(self.spec, self.top, self.unknown is not None)]

    def rows(self, handle: BinaryIO) -> Iterator[dict[str, Any]]:
        """Rows of the capture read from ``handle``, each as soon as it is due.

        Raises:
            FlowFormatError: the stream is not a capture, or breaks off; the rows of the flows
                seen until then come out first.
        """
        try:
            for cols in self.decoder.packets(handle, self.capture):
                yield from self.feed(cols)
        except FlowFormatError:
            yield from self.finish()
            raise
        yield from self.finish()

    def feed(self, cols: PacketColumns) -> list[dict[str, Any]]:
        """The rows due after a batch of packets."""
        return self._rows(self.table.feed(cols))

    def finish(self) -> list[dict[str, Any]]:
        """The final rows of the flows still active at the end of the stream."""
        return self._rows(self.table.finish())

    def summary(self) -> str:
        table = self.table
        short = f", {table.short} shorter than data.min_packets={table.min_packets} left out" if table.short else ""
        return (f"{self.counts['first']} first and {self.counts['final']} final rows for {table.ended} flows{short}; "
                f"{self.decoder.report.summary()}")

    def _rows(self, due: list[Due]) -> list[dict[str, Any]]:
        if not due:
            return []
        windows = [w for d in due for w in d.windows]
        owner = np.repeat(np.arange(len(due)), [len(d.windows) for d in due])
        x = window_inputs(windows, self.spec["features"], int(self.spec["packets"]))
        probs, scores = self._predictions(self.spec, self.predictor, x, owner, len(due), self.unknown)
        threshold = self.unknown.threshold if self.unknown is not None else None
        rows = []
        for i, d in enumerate(due):
            self.counts[d.kind] += 1
            prediction = self._prediction(self.spec, {t: p[i] for t, p in probs.items()},
                                          min_confidence=self.min_confidence, top=self.top,
                                          unknown_score=None if scores is None else float(scores[i]),
                                          unknown_threshold=threshold)
            rows.append({"flow": d.flow, "row": d.kind, "packets": d.packets, "windows": len(d.windows), **prediction})
        return rows


class RowWriter:
    """Rows to a text handle as CSV (header first) or JSON lines, flushed after every row."""

    def __init__(self, handle: TextIO, format: str, columns: Sequence[str]) -> None:
        self.handle, self.format = handle, format
        self._csv = csv.DictWriter(handle, fieldnames=list(columns)) if format == "csv" else None
        if self._csv is not None:
            self._csv.writeheader()
            handle.flush()

    def write(self, row: Mapping[str, Any]) -> None:
        if self._csv is not None:
            self._csv.writerow(row)
        else:
            self.handle.write(json.dumps(row) + "\n")
        self.handle.flush()
