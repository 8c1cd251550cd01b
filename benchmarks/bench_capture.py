"""Capture -> flow store throughput on one core: fedaux's reader (dpkt) against NFStream's flow meter.

    python benchmarks/bench_capture.py [--capture DIR] [--repeats N]

The capture is the shipped 150 UC Davis flows (1,069,596 packets) written as one pcap per class
with real Ethernet/IPv4/UDP frames cut at 96 bytes (``fedaux.data.capture.write_captures``; the
tests check that reading it back gives the same flows). Both tools run pinned to one core, in
this process and its children (NFStream's meter process inherits the pinning), on the same files,
in one run; the best of ``--repeats`` runs counts.

The jobs differ, and the table says how: fedaux keeps every packet's time to the microsecond,
length and direction and writes a checksummed store; NFStream (C, libpcap) aggregates flows and
keeps per-packet detail only in milliseconds and only for a flow's first packets (SPLT, at most
255), which is why fedaux does not use it as its reader.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from fedaux.data.capture import read_captures, write_captures
from fedaux.data.flows import FlowCollection


def fedaux_rate(folder: Path, out: Path) -> tuple[float, int, int]:
    start = time.perf_counter()
    flows, _ = read_captures(folder)
    flows.save(out)
    return time.perf_counter() - start, flows.num_packets, flows.num_flows


def nfstream_rate(files: list[Path]) -> tuple[float, int, int]:
    from nfstream import NFStreamer

    start = time.perf_counter()
    packets = flows = 0
    for file in files:
        for flow in NFStreamer(source=str(file), n_meters=1, statistical_analysis=False, n_dissections=0,
                               idle_timeout=60, active_timeout=10**9):
            packets += flow.bidirectional_packets
            flows += 1
    return time.perf_counter() - start, packets, flows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capture", default=None, help="a folder written by an earlier run (default: write one)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, for us and our children
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.capture or Path(tmp) / "captures")
        if args.capture is None:
            start = time.perf_counter()
            write_captures(FlowCollection.load(), folder, snaplen=96)
            print(f"wrote the round-trip capture in {time.perf_counter() - start:.1f} s")
        files = sorted(folder.glob("*/*.pcap"))
        size = sum(f.stat().st_size for f in files) / 1e6
        rows = {}
        for name, measure in (("fedaux (dpkt) capture -> store", lambda: fedaux_rate(folder, Path(tmp) / "s.npz")),
                              ("NFStream flow meter (C)", lambda: nfstream_rate(files))):
            runs = [measure() for _ in range(args.repeats)]
            seconds, packets, flows = min(runs)
            rows[name] = (seconds, packets, flows)
        base = rows["NFStream flow meter (C)"]
        print(f"\n{platform.processor() or platform.machine()}, one core, {len(files)} pcap files, {size:.1f} MB, "
              f"best of {args.repeats}\n")
        print("| reader | packets | flows | seconds | packets/s | ratio to NFStream |")
        print("|---|---|---|---|---|---|")
        for name, (seconds, packets, flows) in rows.items():
            print(f"| {name} | {packets:,} | {flows} | {seconds:.2f} | {packets / seconds:,.0f} | "
                  f"{(packets / seconds) / (base[1] / base[0]):.2f} |")


if __name__ == "__main__":
    main()
