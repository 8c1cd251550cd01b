"""Compressed updates: codecs, bytes as actually sent, and error feedback across rounds."""

from __future__ import annotations

import math

import pytest
import torch
from fedaux.callbacks import CommunicationTracker

from fedaux.config import ConfigError, load_config
from fedaux.federated.compression import RESIDUAL, SEP, Half, Int8, TopK, UplinkCompression, decode_state, encode_state
from fedaux.federated.orchestrator import TIER_EDGE, TIER_TOP
from fedaux.train import build_orchestrator
from tests.conftest import REPO


def _run(tmp_path, *overrides, rounds=2):
    cfg = load_config(REPO / "conf" / "quic.yaml", [
        f"output_dir={tmp_path}", "data.subflows_per_flow=2", f"federated.rounds={rounds}",
        "federated.base_stations=3", "federated.edge_servers=2", "logging.progress=false", "logging.energy=false",
        "logging.plots=false", "logging.wandb.mode=disabled", *overrides])
    orchestrator = build_orchestrator(cfg, callbacks=[CommunicationTracker()])
    orchestrator.run()
    return orchestrator


def test_codecs_round_trip_within_their_precision():
    torch.manual_seed(0)
    x = torch.randn(1000)
    assert torch.equal(Half().decode(Half().encode(x), x), x.half().float())
    parts = Int8().encode(x)
    assert (Int8().decode(parts, x) - x).abs().max() <= parts["scale"] / 2 + 1e-7
    top = TopK(0.05).encode(x)
    assert top["i"].numel() == 50 and top["v"].numel() == 50
    kept = TopK(0.05).decode(top, x)
    assert (kept != 0).sum() == 50 and torch.equal(kept[kept != 0], x[kept != 0])
    assert kept.abs().max() == x.abs().max()


def test_integer_buffers_travel_unchanged():
    state = {"w": torch.randn(3, 4), "num_batches_tracked": torch.tensor(7)}
    wire = encode_state(state, Int8())
    assert set(wire) == {f"w{SEP}q", f"w{SEP}scale", "num_batches_tracked"}
    assert decode_state(wire, state, Int8())["num_batches_tracked"] == 7


def test_topk_error_feedback_carries_the_residual_to_the_next_round():
    torch.manual_seed(1)
    payload = {"w": torch.zeros(200)}
    uplink = UplinkCompression(TopK(0.1))
    first = {"w": torch.randn(200)}
    wire, residual = uplink.encode(first, payload, {})
    assert wire[f"w{SEP}v"].numel() == 20  # the stated fraction
    sent = uplink.decode(wire, payload)["w"]
    assert torch.allclose(sent + residual[RESIDUAL + "w"], first["w"])  # nothing lost: sent or kept
    second = {"w": torch.randn(200)}
    wire2, residual2 = uplink.encode(second, payload, residual)
    sent2 = uplink.decode(wire2, payload)["w"]
    # This round's update includes last round's residual.
    assert torch.allclose(sent2 + residual2[RESIDUAL + "w"], second["w"] + residual[RESIDUAL + "w"], atol=1e-6)
    without = UplinkCompression(TopK(0.1), error_feedback=False)
    assert without.encode(second, payload, residual)[1] == {}


def test_fp16_halves_and_int8_quarters_the_uplink_bytes(tmp_path):
    plain = _run(tmp_path / "none")
    half = _run(tmp_path / "fp16", "federated.compression.uplink=fp16")
    quarter = _run(tmp_path / "int8", "federated.compression.uplink=int8", "federated.compression.downlink=int8")
    full = plain.history[-1][f"comm/bytes_up/{TIER_EDGE}"]
    # Integer counters (6 BatchNorm num_batches_tracked, 8 bytes each) and int8's float32 scales
    # stay uncompressed: the header overhead, under 0.1% here.
    assert half.history[-1][f"comm/bytes_up/{TIER_EDGE}"] / full == pytest.approx(0.5, abs=1e-3)
    assert quarter.history[-1][f"comm/bytes_up/{TIER_EDGE}"] / full == pytest.approx(0.25, abs=1e-3)
    assert quarter.history[-1][f"comm/bytes_down/{TIER_EDGE}"] / plain.history[-1][f"comm/bytes_down/{TIER_EDGE}"] \
        == pytest.approx(0.25, abs=1e-3)
    # The edge servers send their averages up with the same codec.
    assert half.history[-1][f"comm/bytes_up/{TIER_TOP}"] / plain.history[-1][f"comm/bytes_up/{TIER_TOP}"] \
        == pytest.approx(0.5, abs=1e-3)
    assert set(quarter.edge_states) == {0, 1}
    assert all(math.isfinite(r["val/acc/traffic_class"]) for r in quarter.history)


def test_topk_uplink_keeps_a_residual_per_base_station(tmp_path):
    from fedaux.federated.compression import running_statistics

    run = _run(tmp_path, "federated.compression.uplink=topk", "federated.compression.topk_fraction=0.1")
    statistics = running_statistics(run.model)
    assert statistics and all("running_" in name for name in statistics)
    weights = {k: t for k, t in run.global_state.items() if t.is_floating_point() and k not in statistics}
    for client in range(3):
        residual = {k: v for k, v in run.client_states[client]["uplink"].items() if k.startswith(RESIDUAL)}
        assert set(residual) == {RESIDUAL + k for k in weights}  # statistics travel whole: no residual
        assert sum(v.numel() for v in residual.values()) == sum(t.numel() for t in weights.values())
    sparse = sum(t.numel() for t in weights.values())
    dense = sum(run.global_state[k].numel() for k in statistics)
    ints = sum(t.numel() * t.element_size() for t in run.global_state.values() if not t.is_floating_point())
    sent = run.history[-1][f"comm/bytes_up/{TIER_EDGE}"] / 3
    # 10% of the weights, each value with a 4-byte index; the running statistics whole, as float32.
    expected = 8 * math.ceil(0.1 * sparse) + 4 * dense + ints
    assert abs(sent - expected) / expected < 0.01, (sent, expected)
    assert 0.19 < sent / (4 * (sparse + dense)) < 0.21
    for key in statistics:  # running variances stay positive (they went negative when sparsified)
        if key.endswith("running_var"):
            assert (run.global_state[key] > 0).all(), key


def test_topk_downlink_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ConfigError, match="downlink='topk' is not supported"):
        load_config(REPO / "conf" / "quic.yaml", ["federated.compression.downlink=topk"])
