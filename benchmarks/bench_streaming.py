"""Streaming prediction speed: captures replayed through ``fedaux.streaming`` as a pipe hands them over.

    python benchmarks/bench_streaming.py [--run RUN_DIR] [--capture DIR] [--merged] [--concurrent]
                                         [--emit both] [--read-bytes 65536]

The capture is the shipped 150 UC Davis flows (1,069,596 packets) written as one pcap per class by
``fedaux.data.capture.write_captures`` (Ethernet/IPv4/UDP frames cut at 96 bytes, each flow's
packets at their recorded times; written once into the temporary directory, about a minute, and
reused by later runs), replayed as five streams one after another. ``--merged`` writes all classes
as one capture in time order and replays that one stream; the UC Davis flows seldom overlap in
time, and ``--concurrent`` starts them all at once, so the flow table holds all 150. Each stream
goes through a :class:`~fedaux.streaming.StreamPredictor` in this process, as
``fedaux-predict RUN --data -`` runs it: read at most ``--read-bytes`` at a time (64 KiB, a Linux
pipe's capacity: what ``tcpdump -w - |`` hands over at once), rows written as CSV to a text buffer
and flushed one by one, on one core with one torch thread.

Reported: packets/s and rows/s over the replay's wall time (reading, decoding, the flow table,
windows, the model, writing rows), and the latency of first rows: wall time from the read that
delivered a flow's ``data.packets``-th packet to its row being written, p50 and p99. Peak active
flows and peak packet records held show the memory bound. Without ``--run`` it trains a 1-round
run of conf/quic.yaml with 2 base stations first (the weights do not change the speed).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np
import torch

from fedaux.data.capture import write_captures
from fedaux.data.flows import FlowCollection
from fedaux.inference import TrainedRun, model_spec
from fedaux.streaming import RowWriter, StreamPredictor

RECORD_BYTES = 32  # one held packet record: four int64 columns


class Replay(io.RawIOBase):
    """A capture file read as a pipe delivers it: at most ``limit`` bytes per read. ``take()`` gives
    the time of the first read since the last ``take()``: when the bytes of the next batch arrived."""

    def __init__(self, path: Path, limit: int) -> None:
        super().__init__()
        self._file, self.limit = open(path, "rb"), limit
        self._first_read: float | None = None

    def readable(self) -> bool:
        return True

    def read1(self, size: int = -1) -> bytes:
        data = self._file.read(self.limit if size is None or size < 0 else min(size, self.limit))
        if self._first_read is None:
            self._first_read = time.perf_counter()
        return data

    read = read1

    def take(self) -> float:
        at, self._first_read = self._first_read, None
        return at if at is not None else time.perf_counter()

    def close(self) -> None:
        self._file.close()
        super().close()


def _train(tmp: Path) -> Path:
    from fedaux.config import load_config
    from fedaux.train import run

    cfg = load_config("conf/quic.yaml", [f"output_dir={tmp}", "federated.rounds=1", "federated.base_stations=2",
                                         "federated.edge_servers=1", "logging.progress=false", "logging.energy=false",
                                         "logging.plots=false", "logging.wandb.mode=disabled"])
    return run(cfg).run_dir


def _captures(merged: bool, concurrent: bool) -> list[Path]:
    """The capture, written once into the temporary directory and reused by later runs (writing it
    packet by packet takes about a minute)."""
    flows = FlowCollection.load()
    kind = "-merged" * merged + "-concurrent" * concurrent
    folder = Path(tempfile.gettempdir()) / f"fedaux-bench-streaming-{flows.checksum()[:12]}{kind}"
    if (folder / "complete").is_file():
        print(f"reusing the capture in {folder}")
        return sorted(folder.glob("*/*.pcap"))
    if concurrent:  # every flow starts at the first one's time: all of them active at once
        flows = replace(flows, unix_start=np.full(flows.num_flows, flows.unix_start.min()))
    if merged:  # one class: write_captures interleaves every flow in time, in one file
        flows = replace(flows, class_names=("all",), labels=np.zeros(flows.num_flows, np.int64))
    start = time.perf_counter()
    files = write_captures(flows, folder, snaplen=96)
    (folder / "complete").touch()
    print(f"wrote the capture into {folder} in {time.perf_counter() - start:.1f} s (not timed below)")
    return files


def replay(run: TrainedRun, files: list[Path], emit: str, read_bytes: int) -> dict:
    """Stream every file through its own predictor; totals, first-row latencies and peaks."""
    spec, predictor = model_spec(run), run.predictor()
    timeout = float(run.cfg.data.capture.idle_timeout_s)
    latencies: list[float] = []
    totals = {"packets": 0, "first": 0, "final": 0, "flows": 0, "wall_s": 0.0, "active": 0, "held": 0}
    for path in files:
        streamer = StreamPredictor(spec, predictor, idle_timeout_s=timeout, emit=emit)
        writer = RowWriter(io.StringIO(), "csv", streamer.columns)
        source = Replay(path, read_bytes)
        start, counting = time.perf_counter(), 0.0
        for cols in streamer.decoder.packets(cast(BinaryIO, source), "<stdin>"):
            read_at = source.take()
            for row in streamer.feed(cols):
                writer.write(row)
                if row["row"] == "first":
                    latencies.append(time.perf_counter() - read_at)
            began = time.perf_counter()  # the peaks are counted outside the timed work
            totals["active"] = max(totals["active"], streamer.table.active)
            totals["held"] = max(totals["held"], streamer.table.held_packets)
            counting += time.perf_counter() - began
        for row in streamer.finish():
            writer.write(row)
        totals["wall_s"] += time.perf_counter() - start - counting
        source.close()
        totals["packets"] += streamer.decoder.report.packets
        totals["flows"] += streamer.table.ended
        for kind, count in streamer.counts.items():
            totals[kind] += count
    return {**totals, "latencies_ms": 1e3 * np.asarray(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="a finished run folder (default: train one round first)")
    parser.add_argument("--capture", default=None, help="a folder of pcaps (default: the shipped flows, written once "
                                                        "into the temporary directory)")
    parser.add_argument("--merged", action="store_true", help="one stream of all classes in time order")
    parser.add_argument("--concurrent", action="store_true",
                        help="start every flow at the same time (with --merged: 150 flows active at once)")
    parser.add_argument("--emit", choices=("first", "final", "both"), default="both")
    parser.add_argument("--read-bytes", type=int, default=65536, help="at most this many bytes per read")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.run) if args.run else _train(Path(tmp) / "run")
        files = sorted(Path(args.capture).glob("**/*.pcap")) if args.capture else _captures(args.merged, args.concurrent)
        cores = len(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        torch.set_num_threads(1)
        result = replay(TrainedRun.load(run_dir), files, args.emit, args.read_bytes)
        size = sum(f.stat().st_size for f in files) / 1e6
    lat, wall = result["latencies_ms"], result["wall_s"]
    rows = result["first"] + result["final"]
    print(f"\n{platform.processor() or platform.machine()}, {cores} cores (one used), one torch thread; "
          f"torch {torch.__version__}")
    print(f"command: python {' '.join([sys.argv[0], *sys.argv[1:]])}")
    print(f"{len(files)} stream(s), {size:.1f} MB, {result['packets']:,} packets, {result['flows']} flows; "
          f"read {args.read_bytes:,} bytes at a time; --emit {args.emit}\n")
    print("| packets/s | rows/s | first rows | final rows | first-row latency p50 / p99 (ms) | peak active flows "
          "| peak packets held (MB) | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    p50, p99 = (np.percentile(lat, 50), np.percentile(lat, 99)) if len(lat) else (float("nan"), float("nan"))
    print(f"| {result['packets'] / wall:,.0f} | {rows / wall:,.1f} | {result['first']} | {result['final']} "
          f"| {p50:.2f} / {p99:.2f} | {result['active']} | {result['held']:,} ({result['held'] * RECORD_BYTES / 1e6:.2f}) "
          f"| {wall:.2f} |")


if __name__ == "__main__":
    main()
