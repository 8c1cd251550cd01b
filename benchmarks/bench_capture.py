"""Capture -> flow store throughput on one core: fedaux's reader against NFStream's flow meter.

    python benchmarks/bench_capture.py [--capture DIR] [--repeats N] [--big-gb G]

The capture is the shipped 150 UC Davis flows (1,069,596 packets) written as one pcap per class
with real Ethernet/IPv4/UDP frames cut at 96 bytes (``fedaux.data.capture.write_captures``; the
tests check that reading it back gives the same flows). Each tool runs in a child process of its
own, pinned to one core (NFStream's meter process inherits the pinning), on the same files, in one
run; the best of ``--repeats`` runs counts, and each child reports its peak resident memory
(``ru_maxrss`` of the process and of its children).

Both tools must find the same flows: the benchmark compares the multiset of (5-tuple, packets)
of every flow and stops if they differ. The jobs differ, and the table says how: fedaux keeps
every packet's time to the microsecond, length and direction and writes a checksummed store;
NFStream (C, libpcap) aggregates flows and keeps per-packet detail only in milliseconds and only
for a flow's first packets (SPLT, at most 255), which is why fedaux does not use it as its reader.

``--big-gb G`` adds a row for a capture of about G GB (the UC Davis capture repeated, each copy a
day later, so its flows stay apart) read by fedaux alone: peak memory grows with the packets the
store keeps, not with the file, because the file is read in 8 MiB chunks.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _pin_to_one_core() -> None:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024  # Linux reports KiB


def fedaux_child(folder: Path, out: Path) -> dict:
    from fedaux.data.capture import read_captures

    start = time.perf_counter()
    flows, _ = read_captures(folder)
    flows.save(out)
    seconds = time.perf_counter() - start
    counts: collections.Counter[str] = collections.Counter()
    for name, packets in zip(flows.flow_names, (flows.offsets[1:] - flows.offsets[:-1]).tolist()):
        proto, ends = name.split("#", 1)[1].split(" @")[0].split(" ", 1)
        a, b = sorted(ends.split(" > "))
        counts[f"{proto} {a} {b} {packets}"] += 1
    return {"seconds": seconds, "packets": flows.num_packets, "flows": flows.num_flows, "rss_mb": _peak_rss_mb(),
            "flow_sizes": counts}


def nfstream_child(files: list[Path]) -> dict:
    from nfstream import NFStreamer

    start = time.perf_counter()
    packets = flows = 0
    counts: collections.Counter[str] = collections.Counter()
    for file in files:
        for flow in NFStreamer(source=str(file), n_meters=1, statistical_analysis=False, n_dissections=0,
                               idle_timeout=60, active_timeout=10**9):
            packets += flow.bidirectional_packets
            flows += 1
            proto = {6: "tcp", 17: "udp"}.get(flow.protocol, str(flow.protocol))
            a, b = sorted([f"{flow.src_ip}:{flow.src_port}", f"{flow.dst_ip}:{flow.dst_port}"])
            counts[f"{proto} {a} {b} {flow.bidirectional_packets}"] += 1
    return {"seconds": time.perf_counter() - start, "packets": packets, "flows": flows, "rss_mb": _peak_rss_mb(),
            "flow_sizes": counts}


def _run_child(tool: str, folder: Path, out: Path) -> dict:
    """One measurement in a fresh process, so that peak memory is the tool's own."""
    proc = subprocess.run([sys.executable, __file__, "--child", tool, "--capture", str(folder), "--out", str(out)],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{tool} run failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_big_capture(folder: Path, target: Path, gigabytes: float) -> int:
    """Concatenate copies of the capture's pcaps (one file), each copy's times a day later."""
    import numpy as np

    from fedaux.data.pcap_records import read_records

    day = 86_400
    files = sorted(folder.glob("*/*.pcap"))
    pieces = []
    for file in files:
        raw = bytearray(file.read_bytes())
        with open(file, "rb") as handle:
            starts = np.concatenate([b.start + b.file_offset for b in read_records(handle, str(file))])
        pieces.append((raw, starts - 16))  # record headers: seconds at +0 (little-endian)
    written, copy = 0, 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        out.write(bytes(pieces[0][0][:24]))
        while written < gigabytes * 1e9:
            for raw, headers in pieces:
                body = np.frombuffer(bytes(raw), dtype=np.uint8).copy()
                seconds = body[headers[:, None] + np.arange(4)].copy().view("<u4").reshape(-1) + np.uint32(copy * day)
                body[headers[:, None] + np.arange(4)] = seconds.view(np.uint8).reshape(-1, 4)
                out.write(body[24:].tobytes())
                written += len(body) - 24
            copy += 1
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capture", default=None, help="a folder written by an earlier run (default: write one)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--big-gb", type=float, default=0.0, help="also read a capture of about this many GB")
    parser.add_argument("--child", choices=["fedaux", "nfstream"], help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    _pin_to_one_core()
    if args.child:
        folder = Path(args.capture)
        result = (fedaux_child(folder, Path(args.out)) if args.child == "fedaux"
                  else nfstream_child(sorted(folder.glob("*/*.pcap"))))
        print(json.dumps(result))
        return
    from fedaux.data.capture import write_captures
    from fedaux.data.flows import FlowCollection

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.capture or Path(tmp) / "captures")
        if args.capture is None:
            start = time.perf_counter()
            write_captures(FlowCollection.load(), folder, snaplen=96)
            print(f"wrote the round-trip capture in {time.perf_counter() - start:.1f} s")
        files = sorted(folder.glob("*/*.pcap"))
        size = sum(f.stat().st_size for f in files) / 1e6
        rows = {}
        for name, tool in (("fedaux (numpy over the raw records) capture -> store", "fedaux"),
                           ("NFStream flow meter (C)", "nfstream")):
            runs = [_run_child(tool, folder, Path(tmp) / "s.npz") for _ in range(args.repeats)]
            rows[name] = min(runs, key=lambda r: r["seconds"])
        ours, theirs = rows.values()
        same = ours["flow_sizes"] == theirs["flow_sizes"]
        print(f"\n{platform.processor() or platform.machine()}, one core, {len(files)} pcap files, {size:.1f} MB, "
              f"best of {args.repeats}; same flows and packets per flow (5-tuple, packets): {'yes' if same else 'NO'}\n")
        print("| reader | packets | flows | seconds | packets/s | ratio to NFStream | peak RSS (MB) |")
        print("|---|---|---|---|---|---|---|")
        for name, r in rows.items():
            print(f"| {name} | {r['packets']:,} | {r['flows']} | {r['seconds']:.2f} | {r['packets'] / r['seconds']:,.0f} "
                  f"| {(r['packets'] / r['seconds']) / (theirs['packets'] / theirs['seconds']):.2f} | {r['rss_mb']:.0f} |")
        if args.big_gb:
            big = Path(tmp) / "big" / "all" / "big.pcap"
            copies = write_big_capture(folder, big, args.big_gb)
            r = _run_child("fedaux", big.parent.parent, Path(tmp) / "big.npz")
            print(f"| fedaux, {big.stat().st_size / 1e9:.2f} GB capture ({copies} copies) | {r['packets']:,} | "
                  f"{r['flows']} | {r['seconds']:.2f} | {r['packets'] / r['seconds']:,.0f} | | {r['rss_mb']:.0f} |")
        if not same:
            diff = (collections.Counter(ours["flow_sizes"]) - collections.Counter(theirs["flow_sizes"]))
            raise SystemExit(f"the readers found different flows, e.g. {list(diff.items())[:3]}")


if __name__ == "__main__":
    main()
