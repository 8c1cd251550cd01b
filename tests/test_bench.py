"""fedaux-bench: sections, the resumable run cache, and the statistics it reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as scipy_stats

from fedaux.bench import main, run_bench
from fedaux.bench.stats import board_stats, bootstrap_interval, paired_test
from fedaux.errors import ConfigError
from tests.conftest import REPO

TINY = ["data.subflows_per_flow=4", "federated.rounds=2", "federated.base_stations=3", "federated.edge_servers=2"]


def _bench_file(tmp_path):
    text = f"""
seeds: [0, 1]
jobs: 1
cache: {tmp_path / 'cache'}
output: {tmp_path / 'docs'}
overrides: {json.dumps(TINY)}
leaderboards:
  quic:
    title: tiny
    reference: null
    columns: [total_MB]
    scatter: total_MB
    methods:
      fedavg: {REPO / 'conf' / 'fedavg.yaml'}
      fedper: {REPO / 'conf' / 'quic.yaml'} federated.strategy=fedper
ablation:
  seeds: [0]
  baseline: main only
  reference: null
  methods:
    main only: {REPO / 'conf' / 'fedavg.yaml'}
    unrelated: {REPO / 'conf' / 'ablation' / 'unrelated.yaml'}
"""
    path = tmp_path / "bench.yaml"
    path.write_text(text)
    return path


@pytest.mark.slow  # five runs in spawned workers, three invocations
def test_bench_writes_the_page_and_resumes_from_its_cache(tmp_path):
    path = _bench_file(tmp_path)
    first = run_bench(str(path), [], progress=False)
    # fedavg on the leaderboard and "main only" in the ablation are one config: one run, shared.
    assert "5 distinct runs" in first["runs_note"], first["runs_note"]
    assert len(list((tmp_path / "cache").glob("*.json"))) == 5
    page = (tmp_path / "docs" / "results.md").read_text()
    assert "`fedper`" in page and "`unrelated`" in page and "acc vs fedavg" in page
    assert (tmp_path / "docs" / "results" / "quic.png").is_file()
    assert (tmp_path / "docs" / "results" / "quic_total_MB.png").is_file()
    assert "MB to target / fedavg" in page
    quic = first["boards"]["quic"]["stats"]
    assert quic["fedper"]["per_seed"][0]["final_accuracy"] is not None
    assert set(first["boards"]["quic"]["personal_local"]) == {"fedper"}
    # A killed benchmark: one cached run lost; the next invocation computes only that one.
    victim = sorted((tmp_path / "cache").glob("*.json"))[0]
    victim.unlink()
    second = run_bench(str(path), [], progress=False)
    assert ": 1 computed now" in second["runs_note"], second["runs_note"]
    assert second["boards"]["quic"]["stats"]["fedavg"]["final_accuracy"] == quic["fedavg"]["final_accuracy"]
    # --only keeps the other sections from results.json
    third = run_bench(str(path), [], only=["ablation"], progress=False)
    assert third["boards"]["quic"] == json.loads(json.dumps(second["boards"]["quic"]))


def test_bench_names_an_unknown_section(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(_bench_file(tmp_path)), "--only", "headline"])
    assert exit_info.value.code == 2
    assert "'headline' is not a section" in capsys.readouterr().err


def test_paired_tests_are_scipy_on_the_seed_pairs():
    a, b = [0.81, 0.84, 0.86, 0.79, 0.90], [0.78, 0.80, 0.85, 0.80, 0.84]
    test = paired_test(a, b)
    assert test["diff"] == pytest.approx(np.mean(np.subtract(a, b)))
    assert test["t_p"] == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)
    assert test["wilcoxon_p"] == pytest.approx(scipy_stats.wilcoxon(a, b).pvalue)
    assert test["wilcoxon_p"] >= 0.0625  # five pairs: the exact test's floor
    assert paired_test([1, 2], [1, 2])["t_p"] is None


def test_paired_tests_leave_out_pairs_with_a_missing_value():
    # A personalised method has no global-model F1 (None): its pairs are left out, not read as NaN.
    a, b = [0.81, None, 0.86, 0.79, 0.90], [0.78, 0.80, 0.85, None, 0.84]
    kept_a, kept_b = [0.81, 0.86, 0.90], [0.78, 0.85, 0.84]
    test = paired_test(a, b)
    assert test["n"] == 3 and test["diff"] == pytest.approx(np.mean(np.subtract(kept_a, kept_b)))
    assert test["t_p"] == pytest.approx(scipy_stats.ttest_rel(kept_a, kept_b).pvalue)
    assert paired_test([None, None], [0.7, 0.8]) == {"diff": None, "n": 0, "t_p": None, "wilcoxon_p": None}


def test_bootstrap_interval_brackets_the_mean():
    values = [0.7, 0.8, 0.75, 0.9, 0.85]
    low, high = bootstrap_interval(values)
    assert low < np.mean(values) < high
    assert bootstrap_interval(values) == (low, high)  # seeded: the page regenerates identically


def test_censored_rounds_count_a_miss_as_rounds_plus_one():
    def run(final, reached):
        return {"summary": {"final_accuracy": final, "final_f1": final, "rounds": 30, "rounds_to_target": reached,
                            "MB_to_target": None if reached is None else 10.0 * reached,
                            "compute_s_to_target": None, "total_MB": 1.0, "total_compute_s": 1.0}}

    out = board_stats({"a": [run(0.9, 5), run(0.8, None)], "b": [run(0.7, 10), run(0.7, 12)]}, "b", None)
    assert out["a"]["rounds_to_target_censored"]["mean"] == pytest.approx((5 + 31) / 2)
    assert out["a"]["MB_to_target"]["n"] == 1 and out["a"]["reached"] == 1
    assert out["a"]["vs_baseline"]["final_accuracy"]["diff"] == pytest.approx(0.15)


def test_a_run_key_ignores_options_left_at_their_defaults():
    from fedaux.bench.runs import RunSpec

    quic = str(REPO / "conf" / "quic.yaml")
    plain = RunSpec(quic, (), 0).key()
    assert RunSpec(quic, ("federated.compression.uplink=none", "logging.progress=true"), 0).key() == plain
    assert RunSpec(quic, ("federated.compression.uplink=int8",), 0).key() != plain
    assert RunSpec(quic, (), 1).key() != plain


# ---------------------------------------------------------------------------------------- folds x seeds
def _folds_bench(tmp_path, folds: int = 2):
    path = tmp_path / "bench.yaml"
    path.write_text(f"""
seeds: [0]
folds: {folds}
jobs: 1
cache: {tmp_path / 'cache'}
output: {tmp_path / 'docs'}
overrides: {json.dumps([*TINY[:1], "federated.rounds=1", *TINY[2:]])}
leaderboards:
  few:
    title: few labels
    reference: null
    methods:
      fedavg: {REPO / 'conf' / 'fedavg.yaml'} data.labeled_fraction=null data.labeled_flows_per_class=2
      fedauxhmtl: {REPO / 'conf' / 'quic.yaml'} data.labeled_fraction=null data.labeled_flows_per_class=2
  plain:
    folds: 0
    reference: null
    methods:
      fedavg: {REPO / 'conf' / 'fedavg.yaml'}
""")
    return path


def test_a_board_with_folds_runs_every_fold_seed_pair(tmp_path):
    from fedaux.bench.config import load_bench_config
    from fedaux.bench.plan import plan
    from fedaux.bench.runs import RunSpec

    bench, conf_dir = load_bench_config(_folds_bench(tmp_path))
    rows = plan(bench, conf_dir, {"few", "plain"})
    few = rows[("few", "fedavg", None)]
    assert [s.unit for s in few] == [(0, 0), (1, 0)]
    assert [s.unit for s in rows[("few", "fedauxhmtl", None)]] == [(0, 0), (1, 0)]
    cfg = few[1].load()
    assert (cfg.data.folds, cfg.data.fold, cfg.seed) == (2, 1, 0)
    assert len({s.key() for s in few}) == 2
    (plain,) = rows[("plain", "fedavg", None)]
    assert plain.unit == (None, 0) and plain.load().data.folds == 0
    # Without folds a spec is the one earlier versions made: the run cache still finds its runs.
    assert plain.key() == RunSpec(plain.config, plain.overrides, 0).key()
    with pytest.raises(ConfigError, match=r"few.folds=-2 must be 0 or 1 \(no cross-validation\) or >= 2"):
        load_bench_config(_folds_bench(tmp_path), ["leaderboards.few.folds=-2"])


def test_board_stats_pair_methods_by_fold_and_seed_in_any_order():
    def run(fold, seed, acc, flow):
        return {"spec": {"seed": seed, "fold": fold},
                "summary": {"final_accuracy": acc, "final_f1": acc, "rounds": 3, "rounds_to_target": None,
                            "accuracy_key": "val/acc/traffic_class", "MB_to_target": None, "compute_s_to_target": None,
                            "total_MB": 1.0, "total_compute_s": 1.0},
                "history": [{"val/flow_acc/traffic_class": flow}]}

    a = [run(0, 0, 0.80, 0.90), run(1, 0, 0.70, 0.80), run(0, 1, 0.60, 0.70)]
    b = [run(1, 0, 0.65, 0.70), run(0, 1, 0.50, 0.50), run(0, 0, 0.78, 0.90)]  # another order
    out = board_stats({"a": a, "b": b}, "b", None)
    test = out["a"]["vs_baseline"]
    assert test["final_accuracy"]["diff"] == pytest.approx(np.mean([0.02, 0.05, 0.10]))
    assert test["final_flow_accuracy"]["diff"] == pytest.approx(np.mean([0.0, 0.10, 0.20]))
    assert out["a"]["final_flow_accuracy"]["mean"] == pytest.approx(0.8)
    assert {(f["fold"], f["seed"]) for f in out["a"]["per_seed"]} == {(0, 0), (1, 0), (0, 1)}
    with pytest.raises(ValueError, match=r"'a' and 'b' ran different \(fold, seed\) pairs"):
        board_stats({"a": a, "b": b[:2]}, "b", None)
    # The page: the three accuracies of every row, and how the runs pair up.
    from types import SimpleNamespace

    from fedaux.bench.report import render

    board = {"config": {"title": "few", "about": "", "methods": {"a": "quic.yaml", "b": "fedavg.yaml"},
                        "baseline": "b", "reference": None},
             "seeds": [0, 1], "folds": 2, "rounds": 3, "target_accuracy": 0.8, "stats": out, "personal_local": {}}
    page = render({"boards": {"few": board}, "machine": "test", "runs_note": "", "threads": 1, "jobs": 1},
                  SimpleNamespace(alpha=0.05, confidence=0.95), "fedaux-bench")
    assert "2 folds x seeds [0, 1], paired by (fold, seed)" in page
    assert "| method | window acc | flow acc | macro F1 | rounds to target |" in page
    assert "| `a` | 0.700 [" in page and "| 0.800 [" in page  # window and flow accuracy means


@pytest.mark.slow  # four runs in a spawned worker (about a minute on 2 busy cores)
def test_bench_runs_folds_by_seeds_and_reports_flow_accuracy_and_macro_f1(tmp_path):
    # 2 folds x 1 seed x 2 methods, 1 round each, 10 labelled flows in all per fold (2 per class).
    results = run_bench(str(_folds_bench(tmp_path)), [], only=["few"], progress=False)
    assert "4 distinct runs" in results["runs_note"], results["runs_note"]
    few = results["boards"]["few"]
    assert few["folds"] == 2
    for method in ("fedavg", "fedauxhmtl"):
        stats = few["stats"][method]
        assert [(f["fold"], f["seed"]) for f in stats["per_seed"]] == [(0, 0), (1, 0)]
        assert all(0 <= f["final_flow_accuracy"] <= 1 and 0 <= f["final_f1"] <= 1 for f in stats["per_seed"])
    assert few["stats"]["fedauxhmtl"]["vs_baseline"]["final_flow_accuracy"]["n"] == 2
    page = (tmp_path / "docs" / "results.md").read_text()
    assert "2 folds x seeds [0], paired by (fold, seed)" in page
    assert "| method | window acc | flow acc | macro F1 | rounds to target |" in page
    assert "flow accuracy" in page  # the findings compare flow accuracy too


def _unknown_bench(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text(f"""
seeds: [0]
jobs: 1
cache: {tmp_path / 'cache'}
output: {tmp_path / 'docs'}
overrides: {json.dumps([*TINY[:1], "federated.rounds=1", *TINY[2:]])}
unknown:
  title: leave one out
  seeds: [0, 1]
  data_sets:
    quic: {REPO / 'conf' / 'quic.yaml'}
  classes:
    quic: [Youtube, Google Doc]
""")
    return path


def test_the_unknown_board_leaves_each_class_out_in_its_own_runs(tmp_path):
    from fedaux.bench.config import load_bench_config
    from fedaux.bench.plan import plan
    from fedaux.bench.unknown import render_unknown, unknown_board

    bench, conf_dir = load_bench_config(_unknown_bench(tmp_path))
    rows = plan(bench, conf_dir, {"unknown"})
    assert list(rows) == [("unknown", "quic", "Youtube"), ("unknown", "quic", "Google Doc")]
    specs = rows[("unknown", "quic", "Google Doc")]
    assert [s.seed for s in specs] == [0, 1]
    assert list(specs[0].load().data.exclude_classes) == ["Google Doc"]  # a name with a space stays whole
    assert len({s.key() for v in rows.values() for s in v}) == 4
    # Every class by default: the five services of the shipped store.
    del bench.unknown.classes["quic"]
    assert [k[2] for k in plan(bench, conf_dir, {"unknown"})] == ["Google Doc", "Google Drive", "Google Music",
                                                                  "Google Search", "Youtube"]
    bench, _ = load_bench_config(_unknown_bench(tmp_path))

    def run(auroc, rejected):
        return {"summary": {"rounds": 1, "final_accuracy": 0.5,
                            "unknown_detection": {"msp": {"auroc": auroc, "rejected_at_95_known": rejected}}}}

    results = {specs[0]: run(0.6, 0.2), specs[1]: run(0.8, 0.4),
               rows[("unknown", "quic", "Youtube")][0]: run(1.0, 1.0), rows[("unknown", "quic", "Youtube")][1]: run(1.0, 0.8)}
    board = unknown_board(bench, rows, results)
    mean = board["data_sets"]["quic"]["mean"]["msp"]
    assert mean["auroc"] == pytest.approx((0.7 + 1.0) / 2) and mean["rejected_at_95_known"] == pytest.approx((0.3 + 0.9) / 2)
    assert mean["min_auroc"] == pytest.approx(0.7) and mean["classes"] == 2
    page = "\n".join(render_unknown(board))
    assert "| Google Doc | 0.500 | 0.700 / 30% |" in page and "| **mean** | | **0.850 / 60%** |" in page
    with pytest.raises(ConfigError, match=r"unknown.classes.other: not one of unknown.data_sets \['quic'\]"):
        load_bench_config(_unknown_bench(tmp_path), ["unknown.classes.other=[a]"])


@pytest.mark.slow  # two one-round runs in a spawned worker
def test_bench_scores_left_out_services_as_unknown(tmp_path):
    results = run_bench(str(_unknown_bench(tmp_path)), ["unknown.seeds=[0]"], only=["unknown"], progress=False)
    quic = results["unknown"]["data_sets"]["quic"]
    assert set(quic["classes"]) == {"Youtube", "Google Doc"}
    for entry in quic["classes"].values():
        assert set(entry["scores"]) >= {"msp", "energy", "mahalanobis"}
        for score in entry["scores"].values():
            assert 0 <= score["auroc"]["mean"] <= 1 and 0 <= score["rejected_at_95_known"]["mean"] <= 1
    page = (tmp_path / "docs" / "results.md").read_text()
    assert "## leave one out" in page and "| **mean** |" in page


@pytest.mark.slow  # three scale points, each a fresh process (one on Flower's simulation)
def test_scale_points_run_each_engine_over_the_same_windows(tmp_path, monkeypatch):
    from fedaux.bench.scale import run_scale

    monkeypatch.chdir(tmp_path)  # the replicated store goes under ./outputs/bench
    overrides = ["data.subflows_per_flow=2", "logging.energy=false"]
    points = run_scale(REPO / "conf" / "quic.yaml", [4, 8], 1, 1, overrides, ["inprocess", "flower"], flower_max=4)
    assert [(p["base_stations"], p["engine"]) for p in points] == [(4, "inprocess"), (4, "flower"), (8, "inprocess")]
    for p in points:
        assert p["s_per_round"] > 0 and len(p["rss_after_each_round_mb"]) == 1
        assert p["flows"] == 150 and p["data_mb"] == points[0]["data_mb"]  # the same windows at every point
