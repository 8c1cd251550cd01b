"""CertTA's JSON flows (InspiringGroup-Lab/CertTA): one JSON list of flow objects per file.

Each flow object holds ``timestamp`` (seconds from the flow's first packet), ``direction_length``
(IP length, positive client -> server, negative server -> client), ``label`` (an int) and
optionally ``source_file`` (the per-connection capture it was cut from). ``data.root`` may name one
such file, a folder of them, or a folder whose sub-folders hold them: CertTA's own layout,
``<dataset>/json/{test,valid}.json`` with ``<dataset>/labels.json``, is read from ``<dataset>/``
or from ``json/``. A ``labels.json`` (``{"Benign": 0, ...}``) beside the flow files or one folder
above them names the classes; without one the classes are ``class-<n>`` and a warning says where
it was looked for. Lengths are IP lengths, and the store says so (``packet_length: ip``). Flows cut
from one original capture (``source_file``'s capture folder) form one group, kept on one side of
the train/test split.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from fedaux.data.flows import FlowCollection
from fedaux.data.formats import FLOW_READERS, FlowReader
from fedaux.data.reader import FlowFormatError, ParsedFlow

log = logging.getLogger(__name__)

LABELS_FILE = "labels.json"
_SNIFF_BYTES = 4096


def looks_like_certta(path: Path) -> bool:
    """A JSON file whose text starts a list of objects with ``direction_length``, a folder of them,
    or a folder whose sub-folders hold them."""
    if path.is_dir():
        return any(_flow_files_in(folder) for folder in (path, *_sub_folders(path)))
    return _is_flow_file(path)


def _is_flow_file(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError:
        return False
    return head.lstrip()[:1] == b"[" and b'"direction_length"' in head


def capture_of(source_file: str) -> str:
    """The original capture a flow was cut from: ``.../<capture>/<connection>/<file>.pcap`` ->
    ``.../<capture>`` (a source path too short for that is its own group)."""
    parts = source_file.replace("\\", "/").rstrip("/").split("/")
    return "/".join(parts[:-2]) if len(parts) > 2 else source_file


def _flow(raw: Any, where: str) -> tuple[ParsedFlow, int, str | None]:
    if not isinstance(raw, dict):
        raise FlowFormatError(f"{where}: expected a JSON object, found {type(raw).__name__}")
    missing = [k for k in ("timestamp", "direction_length", "label") if k not in raw]
    if missing:
        raise FlowFormatError(f"{where}: missing key(s) {missing}; a flow needs timestamp, direction_length and label")
    times, signed, label = raw["timestamp"], raw["direction_length"], raw["label"]
    if not isinstance(times, list) or not isinstance(signed, list):
        raise FlowFormatError(f"{where}: timestamp and direction_length must be lists")
    if len(times) != len(signed):
        raise FlowFormatError(f"{where}: timestamp has {len(times)} entries but direction_length {len(signed)}")
    if not times:
        raise FlowFormatError(f"{where}: a flow with no packets")
    if not isinstance(label, int) or isinstance(label, bool) or label < 0:
        raise FlowFormatError(f"{where}: label={label!r} must be a non-negative integer")
    try:
        t = np.asarray(times, dtype=np.float64)
        s = np.asarray(signed, dtype=np.float64)
    except (TypeError, ValueError):
        raise FlowFormatError(f"{where}: timestamp and direction_length must hold numbers only") from None
    if not (np.isfinite(t).all() and np.isfinite(s).all()):
        raise FlowFormatError(f"{where}: NaN or infinite value in timestamp or direction_length")
    back = np.flatnonzero(np.diff(t) < 0)
    if back.size:
        k = int(back[0]) + 1
        raise FlowFormatError(f"{where}, packet {k + 1}: time goes back from {t[k - 1]:g} s to {t[k]:g} s")
    lengths = np.abs(s)
    if (lengths == 0).any() or (lengths != np.rint(lengths)).any() or lengths.max() > 65535:
        bad = int(np.flatnonzero((lengths == 0) | (lengths != np.rint(lengths)) | (lengths > 65535))[0])
        raise FlowFormatError(f"{where}, packet {bad + 1}: direction_length={signed[bad]!r} is not a non-zero "
                              "whole number of bytes up to 65535")
    flow = ParsedFlow(unix_start=0.0, times=t - t[0], lengths=lengths.astype(np.int64),
                      directions=(s > 0).astype(np.uint8))
    source = raw.get("source_file")
    return flow, label, source if isinstance(source, str) else None


def _sub_folders(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _flow_files_in(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.glob("*.json")) if p.name != LABELS_FILE and _is_flow_file(p)]


def _flow_files(root: Path) -> list[Path]:
    """``root`` itself, the flow files in ``root``, or (none there) those in its sub-folders."""
    if root.is_file():
        return [root]
    files = _flow_files_in(root) or [f for folder in _sub_folders(root) for f in _flow_files_in(folder)]
    if not files:
        raise FlowFormatError(f"{root}: no CertTA flow files (*.json lists of flows with direction_length) in it "
                              "or in its sub-folders")
    return files


def _labels_file(files: list[Path]) -> tuple[Path | None, list[Path]]:
    """The ``labels.json`` beside the flow files or one folder above them, and every place looked at."""
    looked: list[Path] = []
    for folder in dict.fromkeys(f.parent for f in files):
        for candidate in (folder / LABELS_FILE, folder.parent / LABELS_FILE):
            if candidate not in looked:
                looked.append(candidate)
    return next((p for p in looked if p.is_file()), None), looked


def _class_names(files: list[Path], labels: set[int]) -> list[str]:
    names_file, looked = _labels_file(files)
    if names_file is None:
        log.warning("no %s beside the CertTA flow files or one folder above them (looked for %s): classes are "
                    "named class-0 .. class-%d", LABELS_FILE, ", ".join(str(p) for p in looked), max(labels))
        return [f"class-{i}" for i in range(max(labels) + 1)]
    try:
        mapping = json.loads(names_file.read_text())
        by_index = {int(index): str(name) for name, index in mapping.items()}
    except (ValueError, AttributeError, TypeError) as err:
        raise FlowFormatError(f"{names_file}: expected a JSON object {{class name: label index}} ({err})") from None
    unnamed = sorted(labels - set(by_index))
    if unnamed:
        raise FlowFormatError(f"{names_file}: no name for label(s) {unnamed}")
    gaps = sorted(set(range(max(by_index) + 1)) - set(by_index))
    if gaps or len(by_index) != len(mapping):
        raise FlowFormatError(f"{names_file}: label indices must be 0, 1, ... with one name each; "
                              + (f"no name for {gaps}" if gaps else "two names share an index"))
    return [by_index[i] for i in range(len(by_index))]


def read_certta(root: str | Path, on_bad_flow: str = "error") -> tuple[FlowCollection, list[str]]:
    """Read CertTA JSON flows from a file or folder.

    Returns the flows (classes named by ``labels.json`` where present, else ``class-<n>`` with a
    warning) and the messages of bad flows skipped under ``on_bad_flow: skip``.

    Raises:
        FlowFormatError: naming the file (and flow, and packet) that is malformed.
    """
    root = Path(root)
    files = _flow_files(root)
    # A flow's name is "<file>#<index>", with the file's sub-folder when the files lie in several.
    several = len({f.parent for f in files}) > 1
    flows, labels, names, groups, skipped = [], [], [], [], []
    for file in files:
        file_name = file.relative_to(root).as_posix() if several else file.name
        try:
            records = json.loads(file.read_text())
        except json.JSONDecodeError as err:
            raise FlowFormatError(f"{file}:{err.lineno}:{err.colno}: malformed JSON ({err.msg})") from None
        except (OSError, UnicodeDecodeError) as err:
            raise FlowFormatError(f"{file}: unreadable ({err})") from None
        if not isinstance(records, list):
            raise FlowFormatError(f"{file}: expected a JSON list of flow objects, found {type(records).__name__}")
        for i, raw in enumerate(records):
            where = f"{file}: flow {i}" + (f" ({raw['source_file']})" if isinstance(raw, dict) and "source_file" in raw else "")
            try:
                flow, label, source = _flow(raw, where)
            except FlowFormatError as err:
                if on_bad_flow == "error":
                    raise
                skipped.append(str(err))
                continue
            flows.append(flow)
            labels.append(label)
            names.append(f"{file_name}#{i}")
            groups.append(capture_of(source) if source else f"{file_name}#{i}")
    if not flows:
        raise FlowFormatError(f"{root}: no valid flows ({len(skipped)} skipped as bad)")
    collection = FlowCollection.from_parsed(
        flows, labels=labels, flow_names=names, class_names=_class_names(files, set(labels)),
        provenance=f"CertTA JSON flows from '{root.name}'", packet_length="ip", flow_groups=groups,
    )
    return collection, skipped


FLOW_READERS.register("certta_json")(FlowReader(
    "CertTA JSON flows: a .json list of {timestamp, direction_length, label} objects, or a folder of them",
    detect=looks_like_certta,
    read=lambda path, data_cfg: read_certta(path, data_cfg.on_bad_flow),
    priority=30,
))
