"""Using a trained run: predict, evaluate, export; the exported models agree with the Lightning model.

The trained run is conftest's session fixture ``trained``, shared with tests/test_streaming.py."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from fedaux.data.flows import FlowCollection
from fedaux.errors import DataError
from fedaux.export import export_run, load_exported
from fedaux.inference import TrainedRun, check_packet_length, flow_windows, model_spec
from tests.conftest import REPO

ZEEK = REPO.parent / "shared" / "data" / "pcaps" / "zeek"


def _cli(tool, *args):
    return subprocess.run([sys.executable, "-c", f"from fedaux.cli_models import {tool}_main as m; raise SystemExit(m())",
                           *args], capture_output=True, text=True, timeout=600)


def test_eval_on_the_held_out_flows_reproduces_the_runs_metrics(trained, tmp_path):
    proc = _cli("eval", str(trained.run_dir), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "eval.json").read_text())
    last = trained.history[-1]
    for task in ("traffic_class", "bandwidth", "duration"):
        assert report["heads"][task]["window"]["accuracy"] == pytest.approx(last[f"val/acc/{task}"], abs=1e-6)
        assert report["heads"][task]["flow"]["accuracy"] == pytest.approx(last[f"val/flow_acc/{task}"], abs=1e-6)
        assert report["heads"][task]["window"]["macro_f1"] == pytest.approx(last[f"val/f1/{task}"], abs=1e-6)
    main = report["heads"]["traffic_class"]
    assert set(main["per_class_flow"]) == {"Google Doc", "Google Drive", "Google Music", "Google Search", "Youtube"}
    assert sum(map(sum, main["confusion_flow"])) == report["flows"] == 30
    coverage = main["coverage"]
    assert coverage[0]["coverage"] == 1.0 and coverage[-1]["min_confidence"] == 1.0
    assert (tmp_path / "confusion_traffic_class.png").stat().st_size > 1000
    summary = json.loads((trained.run_dir / "summary.json").read_text())
    assert 0 < summary["suggested_min_confidence"] <= 1 and summary["final_flow_accuracy"] == last["val/flow_acc/traffic_class"]


def _windows(n=1000):
    flows = FlowCollection.load()
    x, _, _ = flow_windows(flows, ["iat", "signed_length", "elapsed"], 60,
                           {"subflows_per_flow": 8, "min_packets": 10, "seed": 0})
    return x[:n]


@pytest.mark.parametrize("format", ["onnx", "torchscript"])
def test_exported_models_match_the_lightning_model(trained, tmp_path, format):
    loaded = TrainedRun.load(trained.run_dir)
    path = export_run(loaded, format, tmp_path / f"model.{format}")
    predictor, meta = load_exported(path)
    assert meta["class_names"]["traffic_class"][0] == "Google Doc" and meta["packet_length"] == "frame"
    assert meta["features"] == ["iat", "signed_length", "elapsed"] and "log1p" in meta["feature_formulas"]["iat"]
    x = _windows()
    assert x.shape == (1000, 3, 60)
    exported, eager = predictor(x), loaded.predictor()(x)
    for task in meta["tasks"]:
        assert np.abs(exported[task] - eager[task]).max() <= 1e-5, task
    with torch.no_grad():  # and the Lightning module's own logits, softmaxed
        logits = loaded.model(torch.from_numpy(x))
    assert np.abs(torch.softmax(logits["traffic_class"], -1).numpy() - exported["traffic_class"]).max() <= 1e-5


def _rows(text):
    return list(csv.DictReader(text.splitlines()))


def test_predict_on_a_capture_writes_one_row_per_flow_and_the_exported_model_agrees(trained, tmp_path):
    capture = ZEEK / "google-cert-repeat.pcap"
    if not capture.is_file():
        pytest.skip("../shared is not beside this checkout")
    proc = _cli("predict", str(trained.run_dir), "--data", str(capture))
    assert proc.returncode == 0, proc.stderr
    rows = _rows(proc.stdout)
    assert len(rows) == 8 and all(r["flow"].startswith("google-cert-repeat.pcap#tcp ") for r in rows)
    assert {"windows", "traffic_class", "traffic_class_probability", "bandwidth", "duration", "top1", "top3"} <= set(rows[0])
    path = export_run(TrainedRun.load(trained.run_dir), "onnx", tmp_path / "m.onnx")
    via_onnx = _rows(_cli("predict", "--model", str(path), "--data", str(capture)).stdout)
    assert [r["traffic_class"] for r in via_onnx] == [r["traffic_class"] for r in rows]
    assert all(abs(float(a["traffic_class_probability"]) - float(b["traffic_class_probability"])) <= 1e-5
               for a, b in zip(via_onnx, rows))


def test_min_confidence_one_labels_every_flow_unknown(trained, tmp_path):
    out = tmp_path / "p.jsonl"
    proc = _cli("predict", str(trained.run_dir), "--data", "embedded:ucdavis_quic_script", "--min-confidence", "1.0",
                "--format", "jsonl", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 150 and {r["traffic_class"] for r in rows} == {"unknown"}


def test_a_class_the_model_does_not_know_is_counted_apart(trained, tmp_path):
    flows = FlowCollection.load()
    renamed = replace(flows, class_names=("Netflix", *flows.class_names[1:]))
    renamed.save(tmp_path / "other.npz")
    proc = _cli("eval", str(trained.run_dir), "--data", str(tmp_path / "other.npz"), "--out", str(tmp_path / "e"))
    assert proc.returncode == 0, proc.stderr
    assert "class 'Netflix' is not one the model knows: 30 flow(s), left out of the scores" in proc.stdout
    report = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert report["unknown_classes"] == {"Netflix": 30}
    assert report["heads"]["traffic_class"]["flow"]["count"] == 120


def test_a_source_of_another_length_quantity_is_refused_unless_converted(trained):
    proc = _cli("predict", str(trained.run_dir), "--data", "embedded:cicdoh20")
    assert proc.returncode == 2
    assert "its packet lengths are ip lengths, the model learned from frame lengths; pass --convert-lengths" in proc.stderr
    flows = FlowCollection.load(REPO / "fedaux" / "data" / "embedded" / "cicdoh20.npz")
    converted = check_packet_length(flows, "frame", True, "cicdoh20")
    assert converted.packet_length == "frame" and (converted.lengths.astype(int) - flows.lengths.astype(int) == 14).all()
    with pytest.raises(DataError):
        check_packet_length(flows, "frame", False, "cicdoh20")
    assert model_spec(TrainedRun.load(trained.run_dir))["packet_length"] == "frame"


def test_the_int8_model_mostly_agrees_with_the_float_model(trained, tmp_path):
    loaded = TrainedRun.load(trained.run_dir)
    predictor, meta = load_exported(export_run(loaded, "onnx-int8", tmp_path / "int8.onnx"))
    assert meta["quantized"].startswith("int8")
    x = _windows()
    quantized, eager = predictor(x)["traffic_class"], loaded.predictor()(x)["traffic_class"]
    # Measured on this fixture: 98.4% same class per window, mean difference under 0.01.
    assert np.abs(quantized - eager).mean() < 0.01
    assert np.mean(quantized.argmax(1) == eager.argmax(1)) >= 0.97
