"""Read the records of an offline W&B run file (``run-<id>.wandb``) for tests.

The file is a 7-byte W&B header followed by a LevelDB-style log of protobuf ``Record`` messages
(32 KiB blocks; each chunk has a 7-byte header: crc32c, length, type). Reading it checks what W&B
itself stored, with no network and no mock.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block tail too short for a chunk header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def history_rows(records) -> list[dict]:
    rows = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item})
    return rows


def run_config(records) -> dict:
    """The config the run was started with (top-level keys, values decoded from JSON)."""
    config = {}
    for r in records:
        if r.WhichOneof("record_type") == "run":
            config.update({i.key: json.loads(i.value_json) for i in r.run.config.update})
    return config


def exit_code(records) -> int | None:
    codes = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
    return codes[-1] if codes else None


def read_finished_run(path: Path, timeout_s: float = 60.0) -> list:
    """Records of a run file once W&B's writer process has flushed its exit record.

    ``run.finish()`` returns when the run is closed, but the separate ``wandb-core`` process may
    still be writing the file for a moment, so poll rather than read once.
    """
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        records = read_records(path)
        if exit_code(records) is not None or time.monotonic() > deadline:
            return records
        time.sleep(0.1)
