"""A compact, checksummed collection of flows: the in-memory and on-disk form of a data set.

All flows' packets are concatenated into flat arrays; ``offsets`` marks where each flow starts.
On disk it is one ``.npz`` file. Times are stored as integer microsecond inter-arrival gaps
(1 us resolution, ample for packet timing, and gaps compress far better than absolute times).
The checksum covers the content, not the zip container, so rebuilding the file from the same raw
folder reproduces it exactly.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedaux.errors import DataError

if TYPE_CHECKING:
    from fedaux.data.reader import ParsedFlow

FORMAT = "fedaux-flows"
FORMAT_VERSION = 2  # 2 adds packet_length and flow_groups; version 1 stores read as frame lengths, no groups
EMBEDDED_NAME = "ucdavis_quic_script.npz"
# What a packet's length counts. UC Davis' most common sizes, 1,392 and 1,412 bytes, are gQUIC's
# 1,350-byte packets in Ethernet frames over IPv4 (14 + 20 + 8 + 1,350) and IPv6 (14 + 40 + 8 +
# 1,350), and its largest is 1,484: frame lengths. CertTA's JSON flows give IP lengths (max 1,500).
PACKET_LENGTHS = ("frame", "ip", "payload")
_ARRAYS = ("offsets", "labels", "iat_us", "lengths", "directions", "unix_start")


class FlowStoreError(DataError):
    """A flow store file is missing, foreign, or corrupted (checksum mismatch)."""


def embedded_path(name: str = EMBEDDED_NAME) -> Path:
    """Path of a flow store shipped inside the package (by default the 150 UC Davis QUIC flows)."""
    return Path(str(resources.files("fedaux.data") / "embedded" / name))


@dataclass(frozen=True)
class FlowView:
    """One flow's packets, as given to target functions.

    Attributes:
        times: ``(n,)`` float64 seconds from the flow's first packet.
        lengths: ``(n,)`` int64 packet lengths in bytes.
        directions: ``(n,)`` uint8, 0 or 1.
        label: index of the flow's class; ``class_name`` is its folder name.
    """

    times: np.ndarray
    lengths: np.ndarray
    directions: np.ndarray
    label: int
    class_name: str
    name: str


@dataclass(frozen=True)
class FlowCollection:
    """Flows with their class labels, as flat packet arrays.

    Attributes:
        class_names: ``C`` class (folder) names; ``labels`` index into it.
        flow_names: ``F`` names ``"<class>/<file>"``.
        labels: ``(F,)`` int64 class of each flow.
        offsets: ``(F + 1,)`` int64; flow ``i`` owns packets ``offsets[i]:offsets[i + 1]``.
        iat_us: ``(P,)`` int64 microseconds since the previous packet of the same flow (the
            first packet's gap is its relative time in the raw file, normally 0).
        lengths: ``(P,)`` uint16 packet lengths in bytes.
        directions: ``(P,)`` uint8 direction flag, 0 or 1.
        unix_start: ``(F,)`` float64 unix time of each flow's first packet (0 where the source
            gives only relative times).
        provenance: free-form description of where the data came from.
        packet_length: what ``lengths`` counts, one of :data:`PACKET_LENGTHS`: ``frame`` (link
            layer header + IP packet), ``ip`` (IP total length) or ``payload`` (transport payload).
        flow_groups: ``F`` names of the capture (or other unit) each flow came from; flows of one
            group stay on one side of the train/test split. Empty: every flow is its own group.
    """

    class_names: tuple[str, ...]
    flow_names: tuple[str, ...]
    labels: np.ndarray
    offsets: np.ndarray
    iat_us: np.ndarray
    lengths: np.ndarray
    directions: np.ndarray
    unix_start: np.ndarray
    provenance: str = ""
    packet_length: str = "frame"
    flow_groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.packet_length not in PACKET_LENGTHS:
            raise FlowStoreError(f"packet_length={self.packet_length!r} is not valid; choose one of {list(PACKET_LENGTHS)}")
        if self.flow_groups and len(self.flow_groups) != len(self.flow_names):
            raise FlowStoreError(f"{len(self.flow_groups)} flow groups for {len(self.flow_names)} flows")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_parsed(
        cls,
        flows: Sequence[ParsedFlow],
        labels: Sequence[int],
        flow_names: Sequence[str],
        class_names: Sequence[str],
        provenance: str = "",
        packet_length: str = "frame",
        flow_groups: Sequence[str] = (),
    ) -> FlowCollection:
        """Concatenate parsed flows; times are rounded to whole microseconds."""
        sizes = np.array([len(f.times) for f in flows], dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(sizes)))
        times_us = np.concatenate([np.rint(f.times * 1e6).astype(np.int64) for f in flows])
        iat_us = np.diff(times_us, prepend=0)
        iat_us[offsets[:-1]] = times_us[offsets[:-1]]  # a flow's first gap is its own start time
        lengths = np.concatenate([f.lengths for f in flows])
        if lengths.size and lengths.max() > np.iinfo(np.uint16).max:
            raise FlowStoreError(f"a packet length of {lengths.max()} bytes does not fit the store (max 65535)")
        return cls(
            class_names=tuple(class_names),
            flow_names=tuple(flow_names),
            labels=np.asarray(labels, dtype=np.int64),
            offsets=offsets,
            iat_us=iat_us,
            lengths=lengths.astype(np.uint16),
            directions=np.concatenate([f.directions for f in flows]).astype(np.uint8),
            unix_start=np.array([f.unix_start for f in flows], dtype=np.float64),
            provenance=provenance,
            packet_length=packet_length,
            flow_groups=tuple(flow_groups),
        )

    # ------------------------------------------------------------------ access
    @property
    def num_flows(self) -> int:
        return len(self.flow_names)

    @property
    def num_packets(self) -> int:
        return int(self.offsets[-1])

    def group_index(self) -> np.ndarray:
        """``(F,)`` int64 group of each flow (flows of one capture share one); see ``flow_groups``."""
        if not self.flow_groups:
            return np.arange(self.num_flows, dtype=np.int64)
        _, index = np.unique(np.asarray(self.flow_groups, dtype=object).astype(str), return_inverse=True)
        return index.astype(np.int64)

    def packet_counts(self) -> np.ndarray:
        """``(F,)`` number of packets of each flow."""
        return np.diff(self.offsets)

    def flow(self, index: int) -> FlowView:
        """The packets of flow ``index`` with float-second times."""
        lo, hi = int(self.offsets[index]), int(self.offsets[index + 1])
        times_us = np.cumsum(self.iat_us[lo:hi])
        return FlowView(
            times=times_us / 1e6,
            lengths=self.lengths[lo:hi].astype(np.int64),
            directions=self.directions[lo:hi],
            label=int(self.labels[index]),
            class_name=self.class_names[int(self.labels[index])],
            name=self.flow_names[index],
        )

    def select(self, flow_indices: Sequence[int] | np.ndarray, provenance: str | None = None) -> FlowCollection:
        """A new collection of the given flows, in the given order (repeats allowed, renamed ``#k``)."""
        order = np.asarray(flow_indices, dtype=np.int64)
        counts = self.packet_counts()[order]
        starts = self.offsets[:-1][order]
        index = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, counts)]) if len(order) else np.zeros(0, np.int64)
        seen: dict[int, int] = {}
        names = []
        for i in order.tolist():
            seen[i] = seen.get(i, 0) + 1
            names.append(self.flow_names[i] if seen[i] == 1 else f"{self.flow_names[i]}#{seen[i] - 1}")
        return FlowCollection(
            class_names=self.class_names, flow_names=tuple(names), labels=self.labels[order],
            offsets=np.concatenate(([0], np.cumsum(counts))).astype(np.int64), iat_us=self.iat_us[index],
            lengths=self.lengths[index], directions=self.directions[index], unix_start=self.unix_start[order],
            provenance=self.provenance if provenance is None else provenance, packet_length=self.packet_length,
            flow_groups=self._selected_groups(order.tolist()),
        )

    def _selected_groups(self, order: list[int]) -> tuple[str, ...]:
        # A repeated flow stays in its original's group, so copies never straddle the split.
        if self.flow_groups:
            return tuple(self.flow_groups[i] for i in order)
        if len(set(order)) < len(order):
            return tuple(self.flow_names[i] for i in order)
        return ()

    def with_class_list(self, class_names: Sequence[str]) -> FlowCollection:
        """The same flows with labels re-indexed into ``class_names`` (a federation's global list).

        A base station may hold only some classes; its folder order must not decide label indices.
        """
        unknown = sorted(set(self.class_names) - set(class_names))
        if unknown:
            raise DataError(f"local class folders {unknown} are not in the federation's classes {list(class_names)}")
        index = np.array([list(class_names).index(name) for name in self.class_names], dtype=np.int64)
        return FlowCollection(**{**self.__dict__, "class_names": tuple(class_names), "labels": index[self.labels]})

    # ------------------------------------------------------------------ persistence
    def checksum(self) -> str:
        """SHA-256 over names and arrays in a fixed byte order (independent of the zip container)."""
        digest = hashlib.sha256()
        digest.update(json.dumps([list(self.class_names), list(self.flow_names)]).encode())
        # Version 2 fields enter the digest only where they differ from version 1's implicit
        # values, so a version 1 store and its rebuild keep one checksum.
        if self.packet_length != "frame" or self.flow_groups:
            digest.update(json.dumps([self.packet_length, list(self.flow_groups)]).encode())
        for name in _ARRAYS:
            array = np.ascontiguousarray(getattr(self, name))
            digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
            digest.update(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
        return digest.hexdigest()

    def save(self, path: str | Path) -> str:
        """Write a compressed ``.npz`` store and return its checksum."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        checksum = self.checksum()
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "class_names": list(self.class_names),
            "flow_names": list(self.flow_names),
            "provenance": self.provenance,
            "packet_length": self.packet_length,
            "flow_groups": list(self.flow_groups),
            "checksum": checksum,
        }
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, meta=np.array(json.dumps(meta)), **{n: getattr(self, n) for n in _ARRAYS})
        tmp.replace(path)
        return checksum

    @classmethod
    def load(cls, path: str | Path | None = None) -> FlowCollection:
        """Load a store written by :meth:`save` (the embedded one when ``path`` is None).

        Raises:
            FlowStoreError: the file is missing, is not a fedaux flow store, or its content does
                not match its checksum.
        """
        path = embedded_path() if path is None else Path(path)
        if not path.is_file():
            raise FlowStoreError(f"{path}: flow store not found; build one with 'fedaux-data build --raw DIR --out FILE'")
        try:
            with np.load(path, allow_pickle=False) as npz:
                meta = json.loads(str(npz["meta"]))
                arrays = {name: npz[name] for name in _ARRAYS}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, json.JSONDecodeError) as err:
            raise FlowStoreError(
                f"{path}: not a readable fedaux flow store ({type(err).__name__}: {err}); "
                "expected an .npz written by 'fedaux-data build'"
            ) from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise FlowStoreError(f"{path}: foreign file, its format tag is not {FORMAT!r}")
        if meta.get("version") not in (1, FORMAT_VERSION):
            raise FlowStoreError(f"{path}: store format version {meta.get('version')!r}, this fedaux reads 1 and {FORMAT_VERSION}")
        collection = cls(
            class_names=tuple(meta["class_names"]),
            flow_names=tuple(meta["flow_names"]),
            provenance=meta.get("provenance", ""),
            packet_length=meta.get("packet_length", "frame"),
            flow_groups=tuple(meta.get("flow_groups", ())),
            **arrays,
        )
        if collection.checksum() != meta.get("checksum"):
            raise FlowStoreError(
                f"{path}: corrupted flow store: content checksum {collection.checksum()[:16]}... "
                f"does not match the recorded {str(meta.get('checksum'))[:16]}...; rebuild it with 'fedaux-data build'"
            )
        collection._check_consistent(path)
        return collection

    def _check_consistent(self, path: Path) -> None:
        n_flows, n_packets = len(self.flow_names), int(self.offsets[-1]) if len(self.offsets) else -1
        problems = []
        if len(self.offsets) != n_flows + 1 or len(self.labels) != n_flows or len(self.unix_start) != n_flows:
            problems.append("per-flow arrays do not match the number of flow names")
        if not (len(self.iat_us) == len(self.lengths) == len(self.directions) == n_packets):
            problems.append("per-packet arrays do not match the offsets")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            problems.append("a label is outside the class list")
        if problems:
            raise FlowStoreError(f"{path}: inconsistent flow store: " + "; ".join(problems))
