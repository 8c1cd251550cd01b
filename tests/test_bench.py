"""fedaux-bench: sections, the resumable run cache, and the statistics it reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as scipy_stats

from fedaux.bench import main, run_bench
from fedaux.bench.stats import board_stats, bootstrap_interval, paired_test
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
