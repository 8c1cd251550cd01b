"""Unknown-traffic detection (step 15, item 4): scores, federated feature statistics, thresholds,
``fedaux-predict --unknown-score/--unknown-threshold`` and the AUROC in ``fedaux-eval``'s eval.json.

The trained run is conftest's session fixture ``trained`` (no class left out); the flows of a class it
does not know come from the embedded store with one class renamed, as in tests/test_inference.py. The
leave-one-class-out run trains its own small model with ``data.exclude_classes``."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torchmetrics.functional.classification import binary_auroc

from fedaux.cli_models import eval_main, predict_main
from fedaux.config import load_config
from fedaux.data.flows import FlowCollection
from fedaux.errors import ConfigError
from fedaux.inference import TrainedRun
from fedaux.labels import IGNORE_INDEX
from fedaux.train import build_orchestrator, run
from fedaux.unknown import (
    STATISTICS_FILE,
    UNKNOWN_SCORES,
    FeatureStatistics,
    FeatureSums,
    auroc,
    detection_report,
    oas_shrinkage,
    threshold_keeping,
)
from tests.conftest import REPO

SCORES = ("msp", "energy", "mahalanobis", "relative_mahalanobis")
QUIET = ["logging.progress=false", "logging.energy=false", "logging.plots=false", "logging.wandb.mode=disabled"]


def _cfg(tmp_path, *overrides):
    return load_config(REPO / "conf" / "quic.yaml", [f"output_dir={tmp_path}", "data.subflows_per_flow=4",
                                                     "federated.base_stations=3", "federated.edge_servers=2",
                                                     *QUIET, *overrides])


def _trained_state(model):
    """A model state that is not the initial one (features of every class differ, BatchNorm's
    running statistics away from 0 and 1), so the sums below are of a non-trivial model."""
    generator = torch.Generator().manual_seed(7)
    return {k: (v + 0.05 * torch.randn(v.shape, generator=generator)) if v.is_floating_point() else v.clone()
            for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------- statistics
def test_federated_feature_statistics_equal_the_centralised_ones(tmp_path):
    server = build_orchestrator(_cfg(tmp_path))
    model, data = server.model, server.data
    state = _trained_state(model)
    task = model.tasks[model.main_task]
    per_station = list(server.engine.feature_sums(server, state))  # the in-process engines' statistics pass
    assert [c for c, _ in per_station] == [0, 1, 2] and all(isinstance(s, FeatureSums) for _, s in per_station)
    federated = per_station[0][1] + per_station[1][1] + per_station[2][1]

    # Centrally: every base station's labelled windows at once, through the same model.
    x = torch.cat([c.x for c in data.clients])
    labels = torch.cat([c.targets[task.target] for c in data.clients])
    labelled = labels != IGNORE_INDEX
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        features = model.trunk(x[labelled]).double()
    central = FeatureSums.of(features, labels[labelled], task.out_features)
    assert torch.equal(federated.count, central.count) and federated.windows == int(labelled.sum()) > 0
    assert torch.allclose(federated.total, central.total) and torch.allclose(federated.outer, central.outer)

    # The statistics derived from them against their textbook definitions on the raw features.
    shrinkage = 0.25
    stats = FeatureStatistics.from_sums(federated, shrinkage)
    y = labels[labelled]
    classes = sorted(set(y.tolist()))
    means = torch.stack([features[y == k].mean(0) for k in classes])
    assert torch.allclose(stats.means[classes], means)
    centred = features - stats.means[y]
    pooled = centred.T @ centred / (len(features) - len(classes))
    dim = pooled.shape[0]
    shrunk = (1 - shrinkage) * pooled + shrinkage * torch.trace(pooled) / dim * torch.eye(dim, dtype=torch.float64)
    assert torch.allclose(stats.precision @ shrunk, torch.eye(dim, dtype=torch.float64), atol=1e-6)
    some = features[:7]
    direct = torch.stack([((some - stats.means[k]) @ stats.precision * (some - stats.means[k])).sum(1) for k in classes], 1)
    assert torch.allclose(stats.distances(some)[:, classes], direct)
    # relative_mahalanobis' reference: the Gaussian of all labelled windows, class-agnostic
    # (population covariance, OAS-shrunk with the intensity oas_shrinkage gives for it).
    mean, precision = stats.background
    assert torch.allclose(mean, features.mean(0))
    whole = torch.cov(features.T, correction=0)
    s = oas_shrinkage(whole, len(features))
    shrunk = (1 - s) * whole + s * torch.trace(whole) / dim * torch.eye(dim, dtype=torch.float64)
    assert torch.allclose(precision @ shrunk, torch.eye(dim, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(stats.background_distances(some), ((some - mean) @ precision * (some - mean)).sum(1))

    # The server adds them up the same way, and leaves out a base station that failed.
    server.sum_features(lambda s: [(0, per_station[0][1]), (1, "raised RuntimeError: gone"), (2, per_station[2][1])])
    assert torch.equal(server.feature_sums.count, per_station[0][1].count + per_station[2][1].count)


def test_oas_shrinkage_and_the_threshold_that_keeps_95_percent():
    rng = np.random.default_rng(0)
    sample = torch.from_numpy(rng.normal(size=(40, 10)) * np.arange(1, 11))
    covariance = torch.cov(sample.T, correction=0)
    # scikit-learn's oas on the same sample (1.5: shrinkage 0.2178...), written out by hand.
    mu = torch.trace(covariance) / 10
    alpha = (covariance ** 2).mean()
    expected = min(float((alpha + mu ** 2) / ((40 + 1) * (alpha - mu ** 2 / 10))), 1.0)
    assert oas_shrinkage(covariance, 40) == pytest.approx(expected)
    assert 0 < oas_shrinkage(covariance, 40) < 1 and oas_shrinkage(torch.eye(4), 10) == 1.0  # already spherical
    known = torch.arange(1.0, 41.0)
    assert threshold_keeping(known) == 38.0 and (known <= 38.0).double().mean() >= 0.95
    assert (known <= 37.0).double().mean() < 0.95  # and no smaller score would do


def test_the_flower_statistics_pass_sends_only_sums_and_equals_in_process(tmp_path, monkeypatch):
    """The server strategy's query and the ClientApp's handler, without Ray: a grid that hands each
    message to the ClientApp as the node of base station ``node_id - 1``."""
    from flwr.app import Context, RecordDict

    task_identity = pytest.importorskip("flwr.supercore.task_identity").TaskIdentity
    for field in ("_run_id", "_node_id", "_task_id"):  # what a Flower process sets before building messages
        monkeypatch.setattr(task_identity, field, 1)

    from fedaux.federated.engines.flower import ARRAYS, FedauxServerStrategy, FlowerTraffic, client_app
    from fedaux.federated.engines.sequential import SequentialEngine

    cfg = _cfg(tmp_path, "federated.engine=flower")
    server = build_orchestrator(cfg)
    state = _trained_state(server.model)
    expected = dict(SequentialEngine().feature_sums(server, state))  # the in-process pass
    sent: list[set[str]] = []

    class LocalGrid:
        def get_node_ids(self):
            return [1, 2, 3]

        def send_and_receive(self, messages, *, timeout=None):
            replies = []
            for message in messages:
                context = Context(run_id=1, node_id=message.metadata.dst_node_id,
                                  node_config={"partition-id": message.metadata.dst_node_id - 1},
                                  state=RecordDict(), run_config={})
                reply = client_app(message, context)
                if message.metadata.message_type.endswith("feature_sums"):
                    sent.append(set(reply.content[ARRAYS].keys()))
                replies.append(reply)
            return replies

    strategy = FedauxServerStrategy(server, OmegaConf.to_yaml(cfg, resolve=True), FlowerTraffic())
    received = dict(strategy.feature_sums(LocalGrid(), state))
    assert sorted(received) == [0, 1, 2] and sent == [{"count", "sum", "outer"}] * 3
    for client, sums in received.items():
        assert torch.equal(sums.count, expected[client].count)
        assert torch.allclose(sums.total, expected[client].total) and torch.allclose(sums.outer, expected[client].outer)


@pytest.mark.slow  # a Flower simulation (Ray) and an in-process run: about two minutes on 2 cores
def test_a_flower_run_writes_the_statistics_an_in_process_run_writes(tmp_path):
    overrides = ["federated.rounds=1", "federated.flower.torch_threads=1", "federated.workers=1"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the simulated clients train
    try:
        local = run(_cfg(tmp_path / "local", *overrides))
    finally:
        torch.set_num_threads(threads)
    flower = run(_cfg(tmp_path / "flower", *overrides, "federated.engine=flower"))
    ours, theirs = (FeatureStatistics.load(r.run_dir / STATISTICS_FILE) for r in (local, flower))
    assert torch.equal(ours.sums.count, theirs.sums.count)
    assert torch.allclose(ours.means, theirs.means, atol=1e-4, equal_nan=True)
    assert flower.summary["suggested_unknown_threshold"].keys() == set(SCORES)


# ---------------------------------------------------------------------------------------- AUROC
def test_auroc_agrees_with_torchmetrics():
    generator = torch.Generator().manual_seed(0)
    for n, levels in ((50, 4), (400, 1000), (7, 2)):
        is_unknown = torch.rand(n, generator=generator) < 0.4
        is_unknown[:2] = torch.tensor([True, False])
        scores = torch.randint(0, levels, (n,), generator=generator).double() / levels  # ties when levels is small
        assert auroc(scores, is_unknown) == pytest.approx(float(binary_auroc(scores.float(), is_unknown.long())), abs=1e-6)
    # torchmetrics takes scores outside [0, 1] for logits and squashes them with a sigmoid, which
    # saturates for energies and distances: ranks keep what the scores order.
    distances = torch.randn(300, generator=generator) * 100
    is_unknown = torch.rand(300, generator=generator) < 0.5
    ranks = torch.argsort(torch.argsort(distances)).double() / 300
    assert auroc(distances, is_unknown) == pytest.approx(float(binary_auroc(ranks.float(), is_unknown.long())), abs=1e-6)
    assert auroc(torch.ones(3), torch.tensor([True, False, True])) == 0.5
    assert np.isnan(auroc(torch.ones(3), torch.zeros(3, dtype=torch.bool)))
    report = detection_report(torch.tensor([0.1, 0.2, 0.3, 0.9, 0.25]), torch.tensor([False, False, False, True, True]))
    assert report["auroc"] == pytest.approx(float(binary_auroc(torch.tensor([0.1, 0.2, 0.3, 0.9, 0.25]),
                                                               torch.tensor([0, 0, 0, 1, 1]))))
    assert report["threshold_95_known"] == pytest.approx(0.3) and report["rejected_at_95_known"] == 0.5


# ---------------------------------------------------------------------------------------- config
def test_an_unknown_score_name_is_a_config_error_listing_the_valid_ones(trained, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"model.unknown.score='nope' is not valid; choose one of "
                                          r"\['msp', 'energy', 'mahalanobis', 'relative_mahalanobis'\]"):
        load_config(REPO / "conf" / "quic.yaml", ["model.unknown.score=nope"])
    with pytest.raises(ConfigError, match="model.unknown.shrinkage=1.5 must be in"):
        load_config(REPO / "conf" / "quic.yaml", ["model.unknown.shrinkage=1.5"])
    assert predict_main([str(trained.run_dir), "--data", "embedded:ucdavis_quic_script", "--unknown-score", "nope",
                         "--out", str(tmp_path / "p.csv")]) == 2
    assert "--unknown-score='nope' is not valid; choose one of ['energy', 'mahalanobis', 'msp', 'relative_mahalanobis']" in capsys.readouterr().err
    assert set(UNKNOWN_SCORES.names()) >= set(SCORES)


# ---------------------------------------------------------------------------------------- predict, eval
@pytest.fixture(scope="module")
def with_unseen_class(tmp_path_factory):
    """The embedded store with its first class renamed: 30 flows of a class the model does not know."""
    flows = FlowCollection.load()
    path = tmp_path_factory.mktemp("unseen") / "unseen.npz"
    replace(flows, class_names=("Netflix", *flows.class_names[1:])).save(path)
    return path


def test_the_run_writes_statistics_and_suggested_thresholds(trained):
    summary = json.loads((trained.run_dir / "summary.json").read_text())
    assert set(summary["suggested_unknown_threshold"]) == set(SCORES)
    assert summary["feature_statistics"]["windows"] > 0 and 0 <= summary["feature_statistics"]["shrinkage"] <= 1
    stats = FeatureStatistics.load(trained.run_dir / STATISTICS_FILE)
    assert stats.means.shape == (5, 256) and stats.precision.shape == (256, 256)
    assert "unknown_detection" not in summary  # no class was left out of this run


@pytest.mark.parametrize("score", SCORES)
def test_each_score_runs_through_predict(trained, with_unseen_class, tmp_path, score, capsys):
    out = tmp_path / "rows.jsonl"
    assert predict_main([str(trained.run_dir), "--data", str(with_unseen_class), "--unknown-score", score,
                         "--unknown-threshold", "suggested", "--format", "jsonl", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    threshold = json.loads((trained.run_dir / "summary.json").read_text())["suggested_unknown_threshold"][score]
    assert len(rows) == 150 and all(np.isfinite(r["unknown_score"]) for r in rows)
    clear = [r for r in rows if abs(r["unknown_score"] - threshold) > 1e-5]  # rows show the score to 6 decimals
    assert all((r["traffic_class"] == "unknown") == (r["unknown_score"] > threshold) for r in clear)
    if score == "msp":  # the baseline is the probability --min-confidence compares
        assert all(abs(r["unknown_score"] - (1 - r["traffic_class_probability"])) <= 2e-6 for r in rows)
    assert f"{score} score above" in capsys.readouterr().err


def test_min_confidence_still_works_and_a_number_is_a_threshold(trained, tmp_path):
    out = tmp_path / "rows.jsonl"
    assert predict_main([str(trained.run_dir), "--data", "embedded:ucdavis_quic_script", "--min-confidence", "1.0",
                         "--format", "jsonl", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["traffic_class"] for r in rows} == {"unknown"} and "unknown_score" in rows[0]
    assert predict_main([str(trained.run_dir), "--data", "embedded:ucdavis_quic_script", "--unknown-score", "energy",
                         "--unknown-threshold", "-1000000.5", "--format", "jsonl", "--out", str(out)]) == 0
    assert {json.loads(line)["traffic_class"] for line in out.read_text().splitlines()} == {"unknown"}


def test_an_exported_model_scores_msp_with_the_runs_threshold(trained, tmp_path, capsys):
    from fedaux.export import export_run

    model = export_run(TrainedRun.load(trained.run_dir), "torchscript", tmp_path / "model.ts")
    out = tmp_path / "rows.jsonl"
    assert predict_main(["--model", str(model), "--data", "embedded:ucdavis_quic_script", "--unknown-threshold",
                         "suggested", "--format", "jsonl", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    threshold = json.loads((trained.run_dir / "summary.json").read_text())["suggested_unknown_threshold"]["msp"]
    assert all((r["traffic_class"] == "unknown") == (r["unknown_score"] > threshold) for r in rows
               if abs(r["unknown_score"] - threshold) > 1e-5)
    assert predict_main(["--model", str(model), "--data", "embedded:ucdavis_quic_script", "--unknown-score", "energy",
                         "--out", str(out)]) == 2
    assert "the unknown score 'energy' needs the model's logits; an exported model gives probabilities only" in \
        capsys.readouterr().err


def test_eval_reports_the_auroc_of_every_score_on_flows_of_an_unseen_class(trained, with_unseen_class, tmp_path):
    assert eval_main([str(trained.run_dir), "--data", str(with_unseen_class), "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    detection = report["unknown_detection"]
    assert (detection["unknown_flows"], detection["known_flows"]) == (30, 120) and set(detection["scores"]) == set(SCORES)
    summary = json.loads((trained.run_dir / "summary.json").read_text())
    for name, score in detection["scores"].items():
        assert 0 <= score["auroc"] <= 1 and 0 <= score["rejected_at_95_known"] <= 1
        assert score["suggested_threshold"] == summary["suggested_unknown_threshold"][name]

    # The AUROC eval.json reports is torchmetrics' on the same flow scores (ranked into [0, 1]).
    from fedaux.cli_models import _labelled_source, _model
    from fedaux.inference import model_spec

    loaded = TrainedRun.load(trained.run_dir)
    x, flow_index, labels, _ = _labelled_source(loaded, model_spec(loaded), str(with_unseen_class), loaded.cfg.data,
                                                False)
    outputs = _model(str(trained.run_dir), None, extras=True)[1](x)
    is_unknown = torch.as_tensor(labels["traffic_class"]) < 0
    scoring = loaded.unknown_scoring()
    for name in SCORES:
        scores = scoring.score(name, outputs, flow_index, len(is_unknown))
        ranks = torch.argsort(torch.argsort(scores)).double() / len(scores)
        assert detection["scores"][name]["auroc"] == pytest.approx(float(binary_auroc(ranks.float(),
                                                                                      is_unknown.long())), abs=1e-6)


def test_leave_one_class_out_runs_end_to_end(tmp_path):
    """UC Davis without Youtube in training: its 30 flows are test flows, scored as unknown by the run
    and by fedaux-eval alike (no accuracy asserted: a tiny model's AUROC varies by machine)."""
    result = run(_cfg(tmp_path, "data.exclude_classes=[Youtube]", "federated.rounds=2", "federated.workers=1",
                      "federated.base_stations=2", "federated.edge_servers=1"))
    info = json.loads((result.run_dir / "data.json").read_text())
    assert "Youtube" not in info["class_names"]["traffic_class"] and info["excluded_classes"] == ["Youtube"]
    in_run = result.summary["unknown_detection"]
    assert set(in_run) == set(SCORES)
    assert eval_main([str(result.run_dir), "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["unknown_classes"] == {"Youtube": 30}
    detection = report["unknown_detection"]
    assert detection["unknown_flows"] == 30 and detection["known_flows"] == report["heads"]["traffic_class"]["flow"]["count"]
    for name in SCORES:
        assert detection["scores"][name]["auroc"] == pytest.approx(in_run[name]["auroc"], abs=1e-9)
        assert detection["scores"][name]["rejected_at_95_known"] == pytest.approx(in_run[name]["rejected_at_95_known"])
        assert detection["scores"][name]["known_kept_at_suggested"] >= 0.95
