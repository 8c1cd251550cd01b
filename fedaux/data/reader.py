"""Reader for the raw UC Davis QUIC flow format.

One folder per class, one text file per flow, one packet per line::

    unix_timestamp   relative_time_s   length_bytes   direction(0|1)

Parsing is vectorised over the whole file: NumPy's C text reader converts it in one call and the
checks run as array operations. Only on the error path does fedaux scan the file again (counting
columns per line with array operations, then a loop over tokens) to name the offending line.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np

from fedaux.data.flows import FlowCollection
from fedaux.errors import ConfigError, DataError

COLUMNS = ("unix_timestamp", "relative_time_s", "length_bytes", "direction")
ON_BAD_FLOW = ("error", "skip")  # data.on_bad_flow: stop at a bad flow file, or skip it and report it
_WHITESPACE = np.array([ord(c) for c in " \t\r\n\v\f"], dtype=np.uint8)


class FlowFormatError(DataError):
    """A raw flow file or folder does not follow the expected format.

    The message names the file (and line, where there is one) and what was expected.
    """


@dataclass(frozen=True)
class ParsedFlow:
    """One flow as read from its file.

    Attributes:
        unix_start: unix timestamp of the first packet (seconds).
        times: ``(n,)`` float64 relative time of each packet, seconds from the flow's start.
        lengths: ``(n,)`` int64 packet length in bytes.
        directions: ``(n,)`` uint8, 0 or 1, as in the file.
    """

    unix_start: float
    times: np.ndarray
    lengths: np.ndarray
    directions: np.ndarray


# Real captures reorder packets by a few microseconds (16 such steps in the 150 shared flows, the
# largest 14 us). A step back up to this bound is kept as recorded; a larger one is an error.
REORDER_TOLERANCE_S = 1e-3


def parse_flow_file(path: str | Path) -> ParsedFlow:
    """Parse one flow file into arrays, validating every line.

    Raises:
        FlowFormatError: naming the file and line for a wrong column count, a token that is not a
            finite number, a negative or fractional length, a direction other than 0/1, time going
            backwards, or an empty file. A flow of one packet, or of packets sharing one time, is a
            valid flow of duration 0 (see :func:`fedaux.data.targets.bandwidth`).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise FlowFormatError(f"{path}: cannot read flow file ({err.strerror})") from err
    buf = np.frombuffer(raw, dtype=np.uint8)
    if buf.size == 0 or np.isin(buf, _WHITESPACE).all():
        raise FlowFormatError(f"{path}: empty flow file; expected one packet per line: {_expected()}")

    try:
        # NumPy's C reader; it skips blank lines and checks that every row has as many columns.
        values = np.loadtxt(io.BytesIO(raw), dtype=np.float64, comments=None, ndmin=2)
    except ValueError:
        values = None
    if values is None or values.shape[1] != 4:
        # Error path only: find and name the offending line.
        _check_column_counts(path, buf)
        _raise_first_bad_token(path, raw)
    _check_values(path, raw, values)

    return ParsedFlow(
        unix_start=float(values[0, 0]),
        times=values[:, 1].copy(),
        lengths=values[:, 2].astype(np.int64),
        directions=values[:, 3].astype(np.uint8),
    )


def _expected() -> str:
    return "4 whitespace-separated numbers '" + " ".join(COLUMNS) + "'"


def _line_starts(buf: np.ndarray) -> np.ndarray:
    """Byte offset of the start of every line, ``(lines,)``."""
    newlines = np.flatnonzero(buf == ord("\n"))
    return np.concatenate(([0], newlines + 1))


def _check_column_counts(path: Path, buf: np.ndarray) -> None:
    """Count tokens per line with array operations and name the first line without four."""
    is_space = np.isin(buf, _WHITESPACE)
    # A token starts at a non-space byte preceded by a space (or the start of the file).
    token_start = ~is_space & np.concatenate(([True], is_space[:-1]))
    line_starts = _line_starts(buf)
    line_starts = line_starts[line_starts < buf.size]
    tokens_per_line = np.add.reduceat(token_start.astype(np.int64), line_starts)
    bad = np.flatnonzero((tokens_per_line != 4) & (tokens_per_line != 0))
    if bad.size:
        line_no = int(bad[0]) + 1
        raise FlowFormatError(
            f"{path}:{line_no}: found {int(tokens_per_line[bad[0]])} columns, expected {_expected()}"
        )


def _line_of_row(raw: bytes, row: int) -> tuple[int, str]:
    """1-based line number and text of the ``row``-th non-blank line (error path only)."""
    seen = -1
    for line_no, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        if line.strip():
            seen += 1
            if seen == row:
                return line_no, line.strip()
    return -1, ""


def _raise_first_bad_token(path: Path, raw: bytes) -> NoReturn:
    for line_no, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        for column, token in zip(COLUMNS, line.split()):
            try:
                float(token)
            except ValueError:
                raise FlowFormatError(
                    f"{path}:{line_no}: {column} {token!r} is not a number; expected {_expected()}"
                ) from None
    raise FlowFormatError(f"{path}: could not parse numbers; expected {_expected()}")


def _check_values(path: Path, raw: bytes, values: np.ndarray) -> None:
    """Reject non-finite numbers, bad lengths/directions and time going backwards."""
    checks = [
        (~np.isfinite(values).all(axis=1), "contains NaN or inf; every column must be a finite number"),
        (values[:, 2] < 0, "has a negative length_bytes; lengths must be >= 0"),
        (values[:, 2] != np.floor(values[:, 2]), "has a fractional length_bytes; lengths are whole bytes"),
        ((values[:, 3] != 0) & (values[:, 3] != 1), "has a direction other than 0 or 1"),
        (
            np.concatenate(([False], np.diff(values[:, 1]) < -REORDER_TOLERANCE_S)),
            f"goes back in time: relative_time_s is more than {REORDER_TOLERANCE_S:g} s smaller than on the "
            "previous line (only capture reordering within that bound is accepted)",
        ),
    ]
    first_bad = math.inf
    message = ""
    for mask, what in checks:
        # Masks involving NaN compare False, so the finiteness check is the one that reports NaN.
        hits = np.flatnonzero(mask)
        if hits.size and hits[0] < first_bad:
            first_bad, message = int(hits[0]), what
    if message:
        line_no, text = _line_of_row(raw, int(first_bad))
        raise FlowFormatError(f"{path}:{line_no}: line {text!r} {message}")


@dataclass
class ReadReport:
    """What reading a raw folder kept and skipped (nothing is skipped silently)."""

    flows_read: int = 0
    skipped: list[str] = field(default_factory=list)


def read_raw_folder(root: str | Path, on_bad_flow: str = "error") -> tuple[FlowCollection, ReadReport]:
    """Read a folder-per-class tree of flow files into one :class:`FlowCollection`.

    Args:
        root: folder holding one sub-folder per class, each with ``*.txt`` flow files.
        on_bad_flow: ``"error"`` stops at the first bad file; ``"skip"`` leaves it out and records
            the reason in the returned report.

    Classes are sorted by folder name and flows by their natural name order (``x-2`` before
    ``x-10``) so the result, and its checksum, do not depend on the file system's listing order.
    """
    if on_bad_flow not in ON_BAD_FLOW:
        raise ConfigError(f"data.on_bad_flow={on_bad_flow!r} is not valid; choose one of {list(ON_BAD_FLOW)}")
    root = Path(root)
    if not root.is_dir():
        raise FlowFormatError(f"{root}: raw data folder not found; expected a folder with one sub-folder per class")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise FlowFormatError(f"{root}: no class folders; expected one sub-folder per class holding *.txt flow files")

    report = ReadReport()
    flows: list[ParsedFlow] = []
    labels: list[int] = []
    names: list[str] = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(class_dir.glob("*.txt"), key=_natural_key)
        if not files:
            raise FlowFormatError(f"{class_dir}: class folder has no flows; expected *.txt flow files")
        for file in files:
            try:
                flow = parse_flow_file(file)
            except FlowFormatError as err:
                if on_bad_flow == "error":
                    raise
                report.skipped.append(str(err))
                continue
            flows.append(flow)
            labels.append(label)
            names.append(f"{class_dir.name}/{file.name}")
    report.flows_read = len(flows)
    if not flows:
        raise FlowFormatError(f"{root}: every flow file was skipped as bad ({len(report.skipped)} skipped)")
    collection = FlowCollection.from_parsed(
        flows, labels=labels, flow_names=names, class_names=[d.name for d in class_dirs]
    )
    return collection, report


def _natural_key(path: Path) -> tuple:
    # "GoogleDoc-2" sorts before "GoogleDoc-10": digits compare as numbers.
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", path.stem))
