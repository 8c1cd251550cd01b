"""Streaming prediction (``fedaux-predict RUN --data -``): rows as flows arrive, the file's classes,
idle eviction, bounded memory, pcapng and garbage on standard input.

The trained run is conftest's session fixture ``trained`` (shared with tests/test_inference.py).
"""

from __future__ import annotations

import csv
import io
import json
import queue
import struct
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import dpkt
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedaux.cli_models import predict_main
from fedaux.data.capture import CaptureDecoder, PacketColumns, read_captures, write_captures
from fedaux.data.features import packet_features
from fedaux.data.flows import FlowCollection
from fedaux.data.reader import ParsedFlow
from fedaux.errors import FedauxError
from fedaux.inference import TrainedRun, model_spec, predict_flows
from fedaux.streaming import ELAPSED, TIME, FlowTable, StreamPredictor, window_inputs

PACKETS = 60  # the fixture run's data.packets
LENGTHS = (30, 60, 200, 600)  # per class: one window (padded), exactly one, several, many


def _truncated(flows: FlowCollection, picks: list[tuple[int, int]]) -> FlowCollection:
    """The first ``n`` packets of each ``(flow, n)``, all in one class: one capture of them all."""
    chosen = flows.select([i for i, _ in picks])
    keep = np.concatenate([np.arange(chosen.offsets[k], chosen.offsets[k] + n) for k, (_, n) in enumerate(picks)])
    counts = np.array([n for _, n in picks], dtype=np.int64)
    return replace(chosen, class_names=("mix",), labels=np.zeros(len(picks), np.int64),
                   offsets=np.concatenate(([0], np.cumsum(counts))), iat_us=chosen.iat_us[keep],
                   lengths=chosen.lengths[keep], directions=chosen.directions[keep], flow_groups=())


@pytest.fixture(scope="module")
def capture(tmp_path_factory, embedded_flows) -> Path:
    """20 real flows (4 per class, cut to 30, 60, 200 and 600 packets) in one pcap, in time order."""
    picks = [(int(i), n) for c in range(len(embedded_flows.class_names))
             for i, n in zip(np.flatnonzero(embedded_flows.labels == c), LENGTHS)]
    return write_captures(_truncated(embedded_flows, picks), tmp_path_factory.mktemp("capture"))[0]


def _pcap_records(path: Path) -> tuple[int, list[tuple[int, bytes]]]:
    """(link type, [(time in µs, frame)]) of a little-endian microsecond pcap, times exact."""
    data = path.read_bytes()
    linktype = struct.unpack_from("<I", data, 20)[0]
    records, pos = [], 24
    while pos < len(data):
        sec, usec, caplen, _ = struct.unpack_from("<IIII", data, pos)
        records.append((sec * 1_000_000 + usec, data[pos + 16:pos + 16 + caplen]))
        pos += 16 + caplen
    return linktype, records


def _as_pcapng(path: Path, out: Path) -> Path:
    linktype, records = _pcap_records(path)
    with open(out, "wb") as handle:
        writer = dpkt.pcapng.Writer(handle, snaplen=96, linktype=linktype)
        for time_us, frame in records:
            writer.writepkt(dpkt.pcapng.EnhancedPacketBlockLE(pkt_data=frame, ts_high=time_us >> 32,
                                                              ts_low=time_us & 0xFFFFFFFF, caplen=len(frame),
                                                              pkt_len=len(frame)))
    return out


def _command(run_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-c", "from fedaux.cli_models import predict_main as m; raise SystemExit(m())",
            str(run_dir), *args]


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(text.splitlines()))


def _ends(row: dict) -> str:
    """A flow's name without its capture: the same for the file and the stream."""
    return str(row["flow"]).split("#", 1)[1]


def _predict_in_process(capsys, monkeypatch, args: list[str], stdin: Path | bytes = b"") -> tuple[int, str, str]:
    """``fedaux-predict`` in this process (no torch import per call), standard input from a real file."""
    with open(stdin, "rb") if isinstance(stdin, Path) else io.BytesIO(stdin) as handle:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(handle))
        capsys.readouterr()
        code = predict_main(args)
        out = capsys.readouterr()
    return code, out.out, out.err


def test_a_capture_on_stdin_gets_the_classes_of_the_same_capture_read_as_a_file(trained, capture, capsys, monkeypatch):
    with open(capture, "rb") as stdin:
        proc = subprocess.run(_command(trained.run_dir, "--data", "-"), stdin=stdin, capture_output=True, text=True,
                              timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "15 first and 20 final rows for 20 flows" in proc.stderr
    streamed = _rows(proc.stdout)
    assert all(r["flow"].startswith("<stdin>#udp ") for r in streamed)
    code, out, err = _predict_in_process(capsys, monkeypatch, [str(trained.run_dir), "--data", str(capture)])
    assert code == 0, err
    by_file = {_ends(r): r for r in _rows(out)}

    final = {_ends(r): r for r in streamed if r["row"] == "final"}
    assert set(final) == set(by_file) and len(final) == 20
    margins = []
    for flow, row in final.items():
        expected = by_file[flow]
        assert row["windows"] == expected["windows"]  # 1 up to 60 packets, 16 beyond
        if row["windows"] == "1":  # the same single window: the same probabilities
            assert row["traffic_class"] == expected["traffic_class"]
            assert float(row["traffic_class_probability"]) == pytest.approx(float(expected["traffic_class_probability"]),
                                                                            abs=1e-5)
            assert float(row["unknown_score"]) == pytest.approx(float(expected["unknown_score"]), abs=1e-5)
        margins.append((float(expected["top1_probability"]) - float(expected["top2_probability"]),
                        row["traffic_class"] == expected["traffic_class"]))
    # Beyond one window the stream draws its random window starts apart from the file's (same
    # distribution, other draws): every decisive prediction agrees, and nearly all do.
    assert all(same for margin, same in margins if margin >= 0.1)
    assert sum(same for _, same in margins) >= 0.75 * len(margins)

    # First rows: the flow's first window alone, exactly the file path's first window.
    first = {_ends(r): r for r in streamed if r["row"] == "first"}
    flows, _ = read_captures(capture)
    assert set(first) == {_ends({"flow": n}) for n, c in zip(flows.flow_names, flows.packet_counts()) if c >= PACKETS}
    spec = model_spec(TrainedRun.load(trained.run_dir))
    one_window = dict(spec, windowing=dict(spec["windowing"], subflows_per_flow=1))
    for row in predict_flows(one_window, flows, TrainedRun.load(trained.run_dir).predictor()):
        if _ends(row) in first:
            got = first[_ends(row)]
            assert got["packets"] == str(PACKETS) and got["windows"] == "1"
            assert got["traffic_class"] == row["traffic_class"] and got["top1"] == row["top1"]
            assert float(got["traffic_class_probability"]) == pytest.approx(row["traffic_class_probability"], abs=1e-5)


def test_rows_come_out_while_the_stream_is_still_open(trained, capture):
    data = capture.read_bytes()
    proc = subprocess.Popen(_command(trained.run_dir, "--data", "-", "--format", "jsonl"), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: queue.Queue[bytes] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in iter(proc.stdout.readline, b"")], daemon=True)
    reader.start()
    rows = []
    try:
        assert proc.stdin is not None
        proc.stdin.write(data[:len(data) // 2])  # half the packets: several flows have their first 60
        proc.stdin.flush()
        # Blocks until a first row arrives; the timeout only keeps a broken build from hanging the suite.
        while not rows or rows[-1]["row"] != "first":
            rows.append(json.loads(lines.get(timeout=300)))
        early = rows[-1]
        assert early["packets"] == PACKETS and early["windows"] == 1 and early["flow"].startswith("<stdin>#")
        proc.stdin.write(data[len(data) // 2:])  # only now the rest, and the end of the stream
        proc.stdin.close()
        assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
    reader.join(timeout=60)
    rows += [json.loads(line) for line in list(lines.queue)]
    assert len(rows) == 35 and sum(r["row"] == "final" for r in rows) == 20


def _parsed(start_s: float, times: np.ndarray) -> ParsedFlow:
    n = len(times)
    return ParsedFlow(start_s, times.astype(np.float64), np.full(n, 1200), (np.arange(n) % 3 != 1).astype(np.uint8))


def _packets(flows: FlowCollection, folder: Path, decoder: CaptureDecoder) -> PacketColumns:
    """``flows`` written as one capture and read back by ``decoder``: every packet, in capture order."""
    path = write_captures(flows, folder)[0]
    with open(path, "rb") as handle:
        batches = list(decoder.packets(handle, "<stdin>"))
    return PacketColumns(*(np.concatenate([getattr(b, f) for b in batches])
                                    for f in ("time_us", "key", "forward", "size")))


def _batch(cols: PacketColumns, rows: slice) -> PacketColumns:
    return PacketColumns(cols.time_us[rows], cols.key[rows], cols.forward[rows], cols.size[rows])


def test_an_idle_flow_is_emitted_and_dropped_while_others_go_on(trained, tmp_path):
    # A: 20 packets in 2 s. B: one packet every 5 s for 10 minutes. Timeout 60 s of capture time.
    flows = FlowCollection.from_parsed([_parsed(1.6e9, np.linspace(0, 2, 20)), _parsed(1.6e9, np.arange(0, 600, 5.0))],
                                       [0, 0], ["a", "b"], ["idle"])
    run = TrainedRun.load(trained.run_dir)
    streamer = StreamPredictor(model_spec(run), run.predictor(), idle_timeout_s=60.0, emit="both")
    cols = _packets(flows, tmp_path, streamer.decoder)
    seen, active, known = [], [], []
    for i in range(len(cols.time_us)):  # one packet per batch, as a slow live link delivers them
        for row in streamer.feed(_batch(cols, slice(i, i + 1))):
            seen.append((i, row["row"], row["flow"].split(":")[1].split(" ")[0], row["packets"]))
        active.append(streamer.table.active)
        known.append(len(streamer.decoder.keys))
    short = [s for s in seen if s[3] == 20]
    assert len(short) == 1 and short[0][1] == "final"
    evicted_at = short[0][0]
    # Evicted by the first packet more than 60 s after its last one, while B goes on.
    assert (cols.time_us[evicted_at] - cols.time_us[:evicted_at][cols.key[:evicted_at] == cols.key[0]].max()) > 60e6
    assert max(active[:evicted_at]) == 2 and set(active[evicted_at:]) == {1}
    assert set(known[evicted_at:]) == {1}  # the decoder forgets the evicted flow's 5-tuple too
    assert [s[1:] for s in seen if s[3] != 20] == [("first", "10001", PACKETS)]
    final = streamer.finish()
    assert [(r["row"], r["packets"], r["windows"]) for r in final] == [("final", 120, 16)]
    assert streamer.table.active == 0


def test_a_flows_memory_does_not_grow_with_its_packets(tmp_path):
    long = FlowCollection.from_parsed([_parsed(1.6e9, np.arange(5000) * 0.01)], [0], ["long"], ["one"])
    decoder = CaptureDecoder()
    cols = _packets(long, tmp_path, decoder)
    held = {}
    for emit in ("both", "first"):
        table = FlowTable(decoder, packets=PACKETS, min_packets=10, subflows_per_flow=16, seed=0,
                          idle_timeout_s=60.0, emit=emit)
        sizes = []
        for lo in range(0, 5000, 250):
            table.feed(_batch(cols, slice(lo, lo + 250)))
            sizes.append(table.held_packets)
        held[emit] = sizes
    # The first window, the last 61 packets and 15 sampled windows of 61: whatever the flow's length.
    assert PACKETS + PACKETS + 1 <= held["both"][-1] and max(held["both"]) <= PACKETS + 16 * (PACKETS + 1)
    assert held["first"] == [0] * 20  # its first row was out at packet 60: only its clock is kept


def test_sampled_windows_are_the_files_windows_at_uniform_starts(tmp_path, capture):
    # Each final-row window is the file path's window at the same start: same features to the bit.
    flows, _ = read_captures(capture)
    features = packet_features(flows, ["iat", "signed_length", "elapsed"])
    decoder = CaptureDecoder("frame")
    table = FlowTable(decoder, packets=PACKETS, min_packets=10, subflows_per_flow=16, seed=0, idle_timeout_s=60.0)
    with open(capture, "rb") as handle:
        due = [d for cols in decoder.packets(handle, "<stdin>") for d in table.feed(cols)] + table.finish()
    index = {_ends({"flow": n}): f for f, n in enumerate(flows.flow_names)}
    checked = 0
    for d in due:
        f = index[_ends({"flow": d.flow})]
        lo, hi = int(flows.offsets[f]), int(flows.offsets[f + 1])
        x = window_inputs(d.windows, ["iat", "signed_length", "elapsed"], PACKETS)
        for window, start in zip(x, d.starts):
            expected = features[:, lo + start:min(lo + start + PACKETS, hi)]
            np.testing.assert_array_equal(window[:, :expected.shape[1]], expected)
            checked += start > 0
    assert checked > 100

    # Draws: 2,000 samplers over a flow of 69 packets (10 starts), fed in uneven batches.
    flows = FlowCollection.from_parsed([_parsed(1.6e9, np.arange(PACKETS + 9) * 0.1)], [0], ["f"], ["one"])
    decoder = CaptureDecoder()
    cols = _packets(flows, tmp_path, decoder)
    table = FlowTable(decoder, packets=PACKETS, min_packets=10, subflows_per_flow=2001, seed=0, idle_timeout_s=60.0)
    for lo in range(0, PACKETS + 9, 7):
        table.feed(_batch(cols, slice(lo, lo + 7)))
    (final,) = table.finish()
    starts = final.starts[1:]
    assert all(w[1, TIME] == cols.time_us[s] for w, s in zip(final.windows[1:], starts) if s)
    counts = np.bincount(starts, minlength=10)
    assert len(counts) == 10 and np.abs(counts - 200).max() <= 60  # 200 +- 4.5 sd each
    assert all(w[0, ELAPSED] == w[0, TIME] - cols.time_us[0] for w in final.windows[1:] if len(w) > PACKETS)


def test_pcapng_on_stdin_gives_the_rows_of_the_pcap(trained, capture, tmp_path, capsys, monkeypatch):
    args = [str(trained.run_dir), "--data", "-", "--format", "jsonl", "--min-confidence", "0.9"]
    code, out, err = _predict_in_process(capsys, monkeypatch, args, capture)
    assert code == 0, err
    from_pcap = [json.loads(line) for line in out.splitlines()]
    code, out, err = _predict_in_process(capsys, monkeypatch, args, _as_pcapng(capture, tmp_path / "mix.pcapng"))
    assert code == 0, err
    from_pcapng = [json.loads(line) for line in out.splitlines()]
    assert [(r["flow"], r["row"], r["traffic_class"]) for r in from_pcapng] == \
        [(r["flow"], r["row"], r["traffic_class"]) for r in from_pcap]
    # --min-confidence applies to streamed rows: below 0.9 the main class is "unknown".
    sure = [r["traffic_class_probability"] >= 0.9 for r in from_pcap]
    assert any(sure) and not all(sure)
    assert all(r["traffic_class"] == (r["top1"] if ok else "unknown") for r, ok in zip(from_pcap, sure))


@pytest.mark.parametrize("score", ["energy", "mahalanobis"])
def test_streamed_rows_carry_the_files_unknown_score_and_threshold(trained, capture, capsys, monkeypatch, score):
    # The scores that read logits (energy) or trunk features (mahalanobis, with the run's
    # federated feature statistics) score a streamed flow as the file path scores it, and the
    # threshold labels it "unknown" alike.
    file_args = [str(trained.run_dir), "--data", str(capture), "--format", "jsonl", "--unknown-score", score]
    code, out, err = _predict_in_process(capsys, monkeypatch, file_args)
    assert code == 0, err
    by_file = {_ends(r): r for r in map(json.loads, out.splitlines())}
    threshold = float(np.median([r["unknown_score"] for r in by_file.values()]))  # half the flows above
    args = [str(trained.run_dir), "--data", "-", "--format", "jsonl", "--unknown-score", score,
            "--unknown-threshold", str(threshold)]
    code, out, err = _predict_in_process(capsys, monkeypatch, args, capture)
    assert code == 0, err
    streamed = [json.loads(line) for line in out.splitlines()]
    final = {_ends(r): r for r in streamed if r["row"] == "final"}
    assert set(final) == set(by_file)
    single = [f for f, r in final.items() if r["windows"] == 1]
    assert len(single) == 10  # the flows of 30 and 60 packets: the same single window both ways
    for flow in single:
        assert final[flow]["unknown_score"] == pytest.approx(by_file[flow]["unknown_score"], rel=1e-4, abs=1e-4)
    for row in streamed:
        above = row["unknown_score"] > threshold
        assert row["traffic_class"] == ("unknown" if above else row["top1"]), row
    assert any(r["unknown_score"] > threshold for r in streamed) and not all(r["unknown_score"] > threshold
                                                                            for r in streamed)


def test_garbage_on_stdin_is_one_line_naming_stdin(trained, capsys, monkeypatch):
    code, out, err = _predict_in_process(capsys, monkeypatch, [str(trained.run_dir), "--data", "-"],
                                         b"GET / HTTP/1.1\r\n\r\n")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("fedaux-predict: error: <stdin>: not a pcap or pcapng capture (first bytes 47455420)")
    assert out.startswith("flow,row,packets,windows,")  # the header, and no row
    code, _, err = _predict_in_process(capsys, monkeypatch, [str(trained.run_dir), "--data", "x.pcap", "--emit",
                                                             "first"])
    assert code == 2 and "--emit applies to a stream (--data -)" in err


@pytest.fixture(scope="module")
def model(trained):
    run = TrainedRun.load(trained.run_dir)
    return model_spec(run), run.predictor()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.floats(0.0, 1.0), st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=3))
def test_a_stream_cut_or_damaged_anywhere_ends_in_rows_and_one_error(capture, model, cut, damage):
    """Whatever breaks the stream, the flows seen until then get their final rows, and the only
    exception is a user error (one line, exit 2 from the command line), never a traceback."""
    data = bytearray(capture.read_bytes())
    data = data[:int(cut * len(data))]
    for where, value in damage:
        if data:
            data[int(where * (len(data) - 1))] = value
    spec, predictor = model
    streamer = StreamPredictor(spec, predictor, idle_timeout_s=60.0, emit="both")
    rows = []
    try:
        for row in streamer.rows(io.BytesIO(bytes(data))):
            rows.append(row)
    except FedauxError as err:
        assert str(err).startswith("<stdin>: ")
    first = {r["flow"] for r in rows if r["row"] == "first"}
    assert first <= {r["flow"] for r in rows if r["row"] == "final"} and streamer.table.active == 0
