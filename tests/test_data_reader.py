"""The raw flow reader and the flow store: real data, and every kind of bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fedaux.cli import data_main
from fedaux.data.flows import FlowCollection, FlowStoreError
from fedaux.data.reader import FlowFormatError, parse_flow_file, read_raw_folder
from tests.conftest import good_rows, write_flow

EMBEDDED_CHECKSUM = "179a9354d04c279cc165e60350fa79d3b4f53beb5c65403664d9d6b337bf5f22"


def test_embedded_store_has_the_150_real_flows(embedded_flows):
    assert embedded_flows.num_flows == 150
    assert len(embedded_flows.class_names) == 5
    assert embedded_flows.num_packets == 1_069_596
    assert np.bincount(embedded_flows.labels).tolist() == [30] * 5
    assert embedded_flows.checksum() == EMBEDDED_CHECKSUM


def test_parse_matches_a_reference_reader(shared_raw):
    path = shared_raw / "Google Search" / "GoogleSearch-3.txt"
    flow = parse_flow_file(path)
    reference = np.loadtxt(path)
    np.testing.assert_allclose(flow.times, reference[:, 1])
    np.testing.assert_array_equal(flow.lengths, reference[:, 2])
    np.testing.assert_array_equal(flow.directions, reference[:, 3])
    assert flow.unix_start == reference[0, 0]


def test_store_round_trips_times_to_the_microsecond(shared_raw, embedded_flows):
    index = embedded_flows.flow_names.index("Youtube/Youtube-7.txt")
    reference = np.loadtxt(shared_raw / "Youtube" / "Youtube-7.txt")
    view = embedded_flows.flow(index)
    np.testing.assert_allclose(view.times, reference[:, 1], atol=0.51e-6)
    np.testing.assert_array_equal(view.lengths, reference[:, 2])


def test_build_reproduces_the_shipped_checksum(shared_raw, tmp_path, capsys):
    out = tmp_path / "store.npz"
    assert data_main(["build", "--raw", str(shared_raw), "--out", str(out)]) == 0
    assert FlowCollection.load(out).checksum() == EMBEDDED_CHECKSUM
    assert EMBEDDED_CHECKSUM in capsys.readouterr().out


def test_info_reports_counts_and_target_distributions(capsys):
    assert data_main(["info"]) == 0
    out = capsys.readouterr().out
    assert "150 flows, 5 classes, 1,069,596 packets" in out
    for name in ("target traffic_class", "target bandwidth", "target duration", "Google Music"):
        assert name in out


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("1500000001.0\t1.0\t100", "found 3 columns"),
        ("1500000001.0\t1.0\t100\t1\t7", "found 5 columns"),
        ("1500000001.0\tabc\t100\t1", "relative_time_s 'abc' is not a number"),
        ("1500000001.0\tnan\t100\t1", "NaN or inf"),
        ("1500000001.0\t1.0\tinf\t1", "NaN or inf"),
        ("1500000001.0\t1.0\t-5\t1", "negative length_bytes"),
        ("1500000001.0\t1.0\t100.5\t1", "fractional length_bytes"),
        ("1500000001.0\t1.0\t100\t2", "direction other than 0 or 1"),
        ("1500000001.0\t0.2\t100\t1", "goes back in time"),
    ],
)
def test_malformed_line_is_named_with_file_and_line(tmp_path, line, expected):
    rows = good_rows(5)  # relative times 0 .. 2.0
    rows.insert(3, line.replace("\t1.0\t", "\t1.6\t") if "back in time" not in expected else line)
    path = write_flow(tmp_path / "c" / "flow.txt", rows)
    with pytest.raises(FlowFormatError, match=expected) as err:
        parse_flow_file(path)
    assert f"{path}:4:" in str(err.value)


def test_small_capture_reordering_is_kept(tmp_path):
    rows = good_rows(5)
    rows.insert(3, "1500000001.0\t0.99999\t100\t1")  # 10 us behind the previous packet at 1.0 s
    flow = parse_flow_file(write_flow(tmp_path / "flow.txt", rows))
    assert len(flow.times) == 6


def test_empty_files_are_refused_and_zero_duration_flows_read(tmp_path):
    empty = write_flow(tmp_path / "empty.txt", [""])
    with pytest.raises(FlowFormatError, match=r"empty\.txt: empty flow file"):
        parse_flow_file(empty)
    # One packet, or packets sharing one time: a valid flow lasting 0 s (its targets are defined).
    still = write_flow(tmp_path / "still.txt", ["1500000000.0\t0\t100\t1", "1500000000.0\t0\t80\t0"])
    assert parse_flow_file(still).times.tolist() == [0.0, 0.0]
    single = write_flow(tmp_path / "single.txt", ["1500000000.0\t0\t100\t1"])
    assert parse_flow_file(single).lengths.tolist() == [100]


def test_folder_errors(tmp_path, raw_folder):
    with pytest.raises(FlowFormatError, match="raw data folder not found"):
        read_raw_folder(tmp_path / "nope")
    (raw_folder / "gamma").mkdir()
    with pytest.raises(FlowFormatError, match=r"gamma: class folder has no flows"):
        read_raw_folder(raw_folder)


def test_on_bad_flow_skip_counts_what_it_skips(raw_folder):
    write_flow(raw_folder / "beta" / "beta-9.txt", ["1 2 3"])
    with pytest.raises(FlowFormatError, match="beta-9.txt:1"):
        read_raw_folder(raw_folder, on_bad_flow="error")
    flows, report = read_raw_folder(raw_folder, on_bad_flow="skip")
    assert flows.num_flows == 6 and report.flows_read == 6
    assert len(report.skipped) == 1 and "beta-9.txt:1" in report.skipped[0]


def test_natural_order_of_flow_files(raw_folder):
    write_flow(raw_folder / "alpha" / "alpha-10.txt", good_rows(12))
    flows, _ = read_raw_folder(raw_folder)
    assert [n for n in flows.flow_names if n.startswith("alpha")] == [
        "alpha/alpha-1.txt", "alpha/alpha-2.txt", "alpha/alpha-3.txt", "alpha/alpha-10.txt"]


def test_corrupted_and_foreign_stores_are_refused(tmp_path, raw_folder):
    flows, _ = read_raw_folder(raw_folder)
    store = tmp_path / "store.npz"
    flows.save(store)
    corrupted = dict(np.load(store))
    corrupted["lengths"] = corrupted["lengths"].copy()
    corrupted["lengths"][0] += 1
    np.savez(tmp_path / "corrupted.npz", **corrupted)
    with pytest.raises(FlowStoreError, match="corrupted.npz: corrupted flow store: content checksum"):
        FlowCollection.load(tmp_path / "corrupted.npz")
    np.savez(tmp_path / "foreign.npz", a=np.arange(3))
    with pytest.raises(FlowStoreError, match="foreign.npz: not a readable fedaux flow store"):
        FlowCollection.load(tmp_path / "foreign.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(FlowStoreError, match="text.npz: not a readable"):
        FlowCollection.load(tmp_path / "text.npz")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["build", "--raw", "{tmp}/missing", "--out", "{tmp}/o.npz"], "missing: raw data folder not found"),
        (["info", "--data", "{tmp}/bad.npz"], "bad.npz: not a readable fedaux flow store"),
        (["info", "--data", "{raw}"], "beta-9.txt:2: found 2 columns"),
    ],
)
def test_cli_errors_are_one_line_without_traceback(tmp_path, raw_folder, args, message):
    write_flow(raw_folder / "beta" / "beta-9.txt", ["1 0 3 1", "1 2"])
    (tmp_path / "bad.npz").write_bytes(b"\x00garbage")
    argv = [a.format(tmp=tmp_path, raw=raw_folder) for a in args]
    proc = subprocess.run([sys.executable, "-m", "fedaux.cli_data", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_info_skip_reports_the_count(raw_folder, capsys):
    write_flow(raw_folder / "beta" / "beta-9.txt", ["1 0 3 1", "1 2"])
    assert data_main(["info", "--data", str(raw_folder), "--on-bad-flow", "skip"]) == 0
    assert "1 bad flow(s) skipped" in capsys.readouterr().out


def test_loading_the_embedded_store_needs_no_shared_folder(tmp_path):
    # A separate interpreter with ../shared hidden behind a different working directory.
    code = "from fedaux.data.flows import FlowCollection; print(FlowCollection.load().num_packets)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.stdout.strip() == "1069596", proc.stderr
