"""The federated loop end to end: bytes, aggregation, run folder, W&B offline, determinism, CLI."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch

from fedaux.config import load_config
from fedaux.federated.aggregation import state_nbytes, two_tier_fedavg, weighted_average
from fedaux.federated.hooks import RoundCallback
from fedaux.federated.orchestrator import TIER_EDGE, TIER_TOP, select_clients
from fedaux.train import run
from tests.conftest import REPO
from tests.wandb_records import exit_code, history_rows, read_finished_run, run_config


class Recorder(RoundCallback):
    """Keeps what the hooks saw, to check the loop against hand computations."""

    def __init__(self) -> None:
        self.updates, self.aggregates, self.events = {}, {}, []

    def on_round_start(self, orchestrator, rnd, clients):
        self.events.append(("start", rnd, tuple(clients)))

    def on_client_done(self, orchestrator, rnd, update):
        self.updates.setdefault(rnd, []).append(copy.copy(update))  # the loop drops update.state after
        self.events.append(("client", rnd, update.client))

    def on_aggregated(self, orchestrator, rnd, aggregate):
        self.aggregates[rnd] = aggregate
        self.events.append(("aggregated", rnd))

    def on_evaluated(self, orchestrator, rnd, metrics):
        self.events.append(("evaluated", rnd))


def test_two_rounds_two_base_stations_two_edge_servers(small_cfg):
    recorder = Recorder()
    small_cfg.federated.rounds = 2
    small_cfg.logging.plots = True
    result = run(small_cfg, callbacks=[recorder])

    # Hooks fire in order, once per round and client.
    assert recorder.events[:6] == [("start", 1, (0, 1)), ("client", 1, 0), ("client", 1, 1), ("aggregated", 1),
                                   ("evaluated", 1), ("start", 2, (0, 1))]

    # Bytes: every tensor of the model's state dict, by hand: float32 parameters, 4 bytes each.
    model = result.orchestrator.model
    buffers = dict(model.named_buffers())
    by_hand = sum(p.numel() * 4 for p in model.parameters())  # float32
    by_hand += sum(b.numel() * (8 if name.endswith("num_batches_tracked") else 4)  # int64 counters, float32 stats
                   for name, b in buffers.items() if name in model.state_dict())
    assert by_hand == state_nbytes(model.state_dict())
    for record in result.history:
        # One base station per edge server: each tier carries the state twice in each direction.
        assert record[f"comm/bytes_down/{TIER_EDGE}"] == 2 * by_hand
        assert record[f"comm/bytes_down/{TIER_TOP}"] == 2 * by_hand
        assert record[f"comm/bytes_up/{TIER_EDGE}"] == 2 * by_hand
        assert record[f"comm/bytes_up/{TIER_TOP}"] == 2 * by_hand
        assert record["comm/bytes_total"] == 8 * by_hand
    assert result.history[-1]["comm/cum_bytes_total"] == 16 * by_hand

    # Aggregation: the global state is the sample-weighted mean of the two clients' states.
    for rnd in (1, 2):
        a, b = recorder.updates[rnd]
        wa, wb = a.num_samples / (a.num_samples + b.num_samples), b.num_samples / (a.num_samples + b.num_samples)
        glob = recorder.aggregates[rnd].global_state
        heavier = a if a.num_samples >= b.num_samples else b
        for key, value in glob.items():
            if key.endswith("num_batches_tracked"):  # an integer counter: taken, not averaged
                assert torch.equal(value, heavier.state[key])
            else:
                torch.testing.assert_close(value, wa * a.state[key] + wb * b.state[key], rtol=1e-6, atol=1e-6)
        loss = (a.train_loss * a.num_samples + b.train_loss * b.num_samples) / (a.num_samples + b.num_samples)
        assert result.history[rnd - 1]["train/global_loss"] == pytest.approx(loss)
        # The RLW weights the clients used, averaged over the round: main task 1, auxiliaries drawn.
        record = result.history[rnd - 1]
        assert record["train/weight/traffic_class"] == 1.0
        assert 0 < record["train/weight/bandwidth"] < 1 and 0 < record["train/weight/duration"] < 1
        expected = (a.train_metrics["train/loss/duration"] * a.num_samples
                    + b.train_metrics["train/loss/duration"] * b.num_samples) / (a.num_samples + b.num_samples)
        assert record["train/loss/duration"] == pytest.approx(expected)
    final = torch.load(result.run_dir / "model.pt", weights_only=True)
    for key, value in recorder.aggregates[2].global_state.items():
        assert torch.equal(final[key], value)

    # Run folder.
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == [1, 2]
    required = {"round", "val/acc/traffic_class", "val/f1/traffic_class", "train/global_loss", "comm/bytes_up",
                "comm/bytes_down", "comm/bytes_total", "time/round_s", "time/total_s"}
    assert required <= set(lines[0])
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["final_accuracy"] == pytest.approx(lines[-1]["val/acc/traffic_class"])
    assert summary["total_MB"] == pytest.approx(16 * by_hand / 1e6)
    assert (result.run_dir / "accuracy.png").stat().st_size > 1000
    assert load_config(result.run_dir / "config.yaml") == small_cfg

    # W&B offline: one run in the run folder, a history row per round with the round as its step.
    runs = list((result.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    records = read_finished_run(runs[0])
    rows = history_rows(records)
    assert [r["_step"] for r in rows] == [1, 2] and [r["round"] for r in rows] == [1, 2]
    assert rows[1]["val/acc/traffic_class"] == pytest.approx(lines[1]["val/acc/traffic_class"])
    assert rows[1]["comm/bytes_total"] == 8 * by_hand
    assert run_config(records)["federated"]["base_stations"] == 2
    assert exit_code(records) == 0


def test_a_crash_still_finishes_the_wandb_run(small_cfg):
    class Boom(RoundCallback):
        def on_evaluated(self, orchestrator, rnd, metrics):
            raise RuntimeError("evaluation exploded")

    with pytest.raises(RuntimeError, match="evaluation exploded"):
        run(small_cfg, callbacks=[Boom()])
    (run_file,) = (REPO / small_cfg.output_dir).glob("*/wandb/offline-run-*/run-*.wandb")
    assert exit_code(read_finished_run(run_file)) == 1


def test_weighted_average_by_name_and_integer_buffers():
    a = {"w": torch.tensor([1.0, 1.0]), "n": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 5.0]), "n": torch.tensor(9)}
    out = weighted_average([a, b], [1, 3])
    torch.testing.assert_close(out["w"], torch.tensor([2.5, 4.0]))
    assert out["n"].item() == 9 and out["n"].dtype == torch.int64  # from the heaviest client, not averaged
    with pytest.raises(ValueError, match="keys"):
        weighted_average([a, {"v": torch.zeros(2), "n": torch.tensor(1)}], [1, 1])


def test_two_tiers_equal_one_tier_fedavg_and_one_edge_is_plain_fedavg():
    torch.manual_seed(0)
    states = {c: {"w": torch.randn(4, 3), "b": torch.randn(3)} for c in range(5)}
    samples = {0: 10, 1: 30, 2: 5, 3: 7, 4: 48}
    flat = weighted_average([states[c] for c in range(5)], [samples[c] for c in range(5)])
    two = two_tier_fedavg(states, samples, [0, 0, 1, 1, 1])
    one = two_tier_fedavg(states, samples, [0] * 5)
    for key in flat:
        torch.testing.assert_close(two.global_state[key], flat[key])
        torch.testing.assert_close(one.global_state[key], flat[key], rtol=0, atol=0)
    assert two.edge_samples == {0: 40, 1: 60}


def test_client_selection_is_seeded_and_sized():
    picked = select_clients(seed=1, rnd=3, num_clients=10, fraction=0.3)
    assert len(picked) == 3 and picked == select_clients(1, 3, 10, 0.3)
    assert select_clients(1, 3, 10, 1.0) == list(range(10))
    assert len({tuple(select_clients(1, r, 10, 0.3)) for r in range(1, 8)}) > 1


def _comparable(history):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in history]


def test_same_config_and_seed_give_identical_metrics(small_cfg):
    small_cfg.federated.rounds = 2
    small_cfg.logging.wandb.mode = "disabled"
    first, second = run(small_cfg), run(small_cfg)
    assert _comparable(first.history) == _comparable(second.history)
    for key, value in first.orchestrator.global_state.items():
        assert torch.equal(value, second.orchestrator.global_state[key])


@pytest.mark.parametrize("config", ["quic.yaml", "fedavg.yaml", "mtdnnfl.yaml"])
def test_each_method_runs_from_its_config_file(config, tmp_path):
    cfg = load_config(REPO / "conf" / config, [f"output_dir={tmp_path}", "federated.rounds=1", "federated.base_stations=3",
                                                "data.subflows_per_flow=2", "logging.progress=false",
                                                "logging.wandb.mode=disabled", "logging.plots=false"])
    result = run(cfg)
    heads = set(result.orchestrator.model.heads)
    assert heads == ({"traffic_class"} if config == "fedavg.yaml" else {"traffic_class", "bandwidth", "duration"})
    assert 0.0 <= result.summary["final_accuracy"] <= 1.0


def test_cli_in_the_sweep_agent_form(tmp_path):
    cmd = [sys.executable, "-m", "fedaux.cli_train", "--config", str(REPO / "conf" / "quic.yaml"),
           f"--output_dir={tmp_path}", "--federated.rounds=1", "--federated.base_stations=2",
           "--data.subflows_per_flow=2", "--model.optimizer.lr=0.002", "--model.weighting.name=dwa",
           "--data.labeled_fraction=0.05", "--federated.local_epochs=1", "--logging.progress=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "fedaux run summary" in proc.stdout
    (run_dir,) = tmp_path.glob("fedauxhmtl-*")
    assert load_config(run_dir / "config.yaml").model.weighting.name == "dwa"
    assert (run_dir / "summary.json").exists() and (run_dir / "metrics.jsonl").exists()


def test_cli_bad_key_is_one_line_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fedaux.cli_train", "--config", str(REPO / "conf" / "quic.yaml"),
                           "federated.rnds=2"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "federated.rnds" in proc.stderr and "rounds" in proc.stderr and "Traceback" not in proc.stderr
