"""Flow sources: one reader per source format, in a registry, chosen from the content.

``data.root`` names a source: a folder or a file. With ``data.format: auto`` (the default) each
registered reader's ``detect`` looks at the content (magic bytes, folder layout), never at the file
name, and the first that recognises it reads it; ``data.format: <name>`` forces one reader. A new
format is one module that registers a :class:`FlowReader`.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from fedaux.data import capture, certta  # noqa: F401  (they register "capture" and "certta_json")
from fedaux.data.flows import FlowCollection, embedded_path
from fedaux.data.formats import FLOW_READERS, FlowReader, readers_by_priority
from fedaux.data.reader import read_raw_folder
from fedaux.errors import DataError

AUTO = "auto"
ZIP_MAGIC = b"PK\x03\x04"  # an .npz store is a zip archive


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(magic)) == magic
    except OSError:
        return False


def _read_store(path: Path, data_cfg: Any) -> tuple[FlowCollection, list[str]]:
    return FlowCollection.load(path), []


def _read_text_folder(path: Path, data_cfg: Any) -> tuple[FlowCollection, list[str]]:
    flows, report = read_raw_folder(path, on_bad_flow=data_cfg.on_bad_flow)
    return flows, list(report.skipped)


# Detection order (priority): binary formats first, the loosest layout (any folder of *.txt files)
# last. Captures (20) and CertTA JSON (30) register themselves in their own modules.
FLOW_READERS.register("store")(FlowReader(
    "a fedaux flow store (.npz written by 'fedaux-data build')",
    detect=lambda path: path.is_file() and _starts_with(path, ZIP_MAGIC),
    read=_read_store,
    priority=10,
))
FLOW_READERS.register("ucdavis_text")(FlowReader(
    "a folder with one sub-folder per class of UC Davis QUIC text flows (*.txt)",
    detect=lambda path: path.is_dir() and any(path.glob("*/*.txt")),
    read=_read_text_folder,
    priority=90,
))


def embedded_store(name: str) -> Path:
    """The shipped store called ``name`` (``ucdavis_quic_script``, ``cicdoh20``).

    Raises:
        DataError: no such store; the message lists the shipped ones.
    """
    path = embedded_path(f"{name}.npz")
    if not path.is_file():
        shipped = sorted(p.stem for p in embedded_path().parent.glob("*.npz"))
        raise DataError(f"data.root={EMBEDDED_PREFIX}{name}: no such embedded store; shipped: {shipped}")
    return path


def format_names() -> list[str]:
    """Valid values of ``data.format``."""
    return [AUTO, *FLOW_READERS.names()]


def detect_format(path: Path) -> str:
    """The name of the first registered reader that recognises ``path``'s content.

    Raises:
        DataError: nothing is at ``path``, or no reader recognises it (the message lists the formats).
    """
    check_exists(path)
    for name, reader in readers_by_priority():
        if reader.detect(path):
            return name
    known = "; ".join(f"{name}: {reader.description}" for name, reader in FLOW_READERS.items())
    seen = "a folder" if path.is_dir() else f"a file starting with bytes {_head(path).hex(' ') or '(none: it is empty)'}"
    raise DataError(f"{path}: not a readable fedaux flow store or other recognised flow source ({seen}); "
                    f"set data.format to force a reader. Formats: {known}")


def check_exists(path: Path) -> None:
    """Raises DataError when nothing can be read at ``path``: nothing there, a symlink loop on the
    way, or a symlink to nothing (each named)."""
    formats = f"a flow source is a folder or file in one of the formats {FLOW_READERS.names()}"
    try:
        os.stat(path)
        return
    except OSError as err:
        problem = err
    except ValueError as err:  # a NUL byte, or characters the file system cannot encode
        raise DataError(f"{str(path)!r}: not a usable path ({err}); {formats}") from None
    if problem.errno == errno.ELOOP:
        loop = next((p for p in (*reversed(path.parents), path) if _is_loop(p)), path)
        what = "a symlink loop" if loop == path else f"{loop}, on the way to it, is a symlink loop"
        raise DataError(f"{path}: {what} (links that lead back to themselves, so no folder or file is there); {formats}")
    if path.is_symlink():
        raise DataError(f"{path}: a symlink to {os.readlink(path)}, where there is nothing; {formats}")
    if problem.errno in (errno.ENOENT, errno.ENOTDIR):
        raise DataError(f"{path}: raw data folder not found (nothing at this path); {formats}")
    raise DataError(f"{path}: cannot be read ({problem.strerror}); {formats}")


def _is_loop(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as err:
        return err.errno == errno.ELOOP
    return False


def _head(path: Path, size: int = 8) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError:
        return b""


EMBEDDED_PREFIX = "embedded:"  # data.root "embedded:<name>" names a store shipped in the package


def load_flows(root: str | Path | None, data_cfg: Any = None) -> tuple[FlowCollection, list[str]]:
    """Flows from ``root``, read by the reader ``data_cfg.format`` names or, with ``auto``, the one
    that recognises the content. ``data_cfg`` is the ``data`` config section (defaults if None). ``None`` or ``""`` is the embedded UC Davis store; ``embedded:<name>``
    another store shipped in the package (``embedded:cicdoh20``).

    Returns the flows and the messages of bad flows skipped under ``on_bad_flow: skip``.
    """
    if root is None or str(root) == "":
        return FlowCollection.load(None), []
    if str(root).startswith(EMBEDDED_PREFIX):
        return FlowCollection.load(embedded_store(str(root)[len(EMBEDDED_PREFIX):])), []
    if data_cfg is None:
        from omegaconf import OmegaConf

        from fedaux.schema import DataConfig

        data_cfg = OmegaConf.structured(DataConfig)
    path = Path(root)
    check_exists(path)
    name = detect_format(path) if data_cfg.format == AUTO else data_cfg.format
    return FLOW_READERS.get(name).read(path, data_cfg)
