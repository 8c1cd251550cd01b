"""Surviving crashes, failing base stations, poisoned updates; resumable runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import lightning as L
import pytest
import torch

from fedaux.config import ConfigError, load_config
from fedaux.federated.aggregation import TwoTierAggregator
from fedaux.federated.errors import NotEnoughClients
from fedaux.federated.hooks import RoundCallback
from fedaux.federated.validation import update_problem
from fedaux.train import run
from tests.conftest import REPO

TIME_KEYS = ("time/",)


def _cfg(tmp_path, *extra):
    # One process unless a test asks for workers: injected faults below read the parent's state.
    return load_config(REPO / "conf" / "quic.yaml", [
        f"output_dir={tmp_path}", "federated.rounds=2", "federated.base_stations=3", "federated.edge_servers=1",
        "data.subflows_per_flow=4", "logging.progress=false", "logging.energy=false", "logging.plots=false",
        "logging.wandb.mode=disabled", "federated.workers=1", *extra])


def _metrics(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(TIME_KEYS)} for r in rows]


class FaultInjector(L.Callback, RoundCallback):
    """Makes one base station fail for real inside its Lightning fit: raise, hang, send NaN or (in
    a worker process) die. It knows the base station from ``trainer.datamodule.client``, so it
    works in the main process and, as a copy, in worker processes."""

    def __init__(self, client: int, mode: str) -> None:
        self.client, self.mode = client, mode
        self.release = threading.Event()  # lets a hung fit in this process end once the test is over

    def __getstate__(self):  # a worker's copy hangs until its process is stopped
        return {"client": self.client, "mode": self.mode}

    def __setstate__(self, state):
        self.__dict__.update(state, release=None)

    def on_train_start(self, trainer, pl_module):
        if trainer.datamodule.client != self.client:
            return
        if self.mode == "raise":
            raise RuntimeError("radio link lost")
        if self.mode == "die":
            os._exit(3)
        if self.mode == "hang":
            if self.release is None:
                time.sleep(600)
            self.release.wait(120)
            raise RuntimeError("released after the test")

    def on_train_end(self, trainer, pl_module):
        if self.mode == "nan" and trainer.datamodule.client == self.client:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))


@pytest.mark.parametrize(("mode", "workers"), [("raise", 1), ("hang", 1), ("nan", 1), ("raise", 2), ("hang", 2),
                                               ("nan", 2), ("die", 2)])
def test_one_bad_base_station_of_three_is_dropped_and_the_run_completes(tmp_path, caplog, mode, workers):
    injector = FaultInjector(client=1, mode=mode)
    extra = ["federated.client_timeout_s=5"] if mode == "hang" else []
    try:
        result = run(_cfg(tmp_path, *extra, f"federated.workers={workers}"), callbacks=[injector])
    finally:
        injector.release.set()
    assert result.orchestrator.engine.workers == workers
    assert [r["clients"] for r in result.history] == [2, 2]
    assert [r["clients/dropped"] for r in result.history] == [1, 1]
    hang = ("no answer within federated.client_timeout_s=5 s" +
            (" (its worker process was stopped and replaced)" if workers > 1 else ""))
    reason = {"raise": "raised RuntimeError: radio link lost", "hang": hang,
              "nan": "update rejected: trunk.layers.0.weight holds NaN or inf",
              "die": "its worker process died (exit code 3) during the local fit"}[mode]
    assert all(r["clients/dropped_reasons"] == f"1: {reason}" for r in result.history)
    assert f"base station 1 dropped: {reason}" in caplog.text
    assert result.orchestrator.rejections == {1: 2}
    assert all(torch.isfinite(t).all() for t in result.orchestrator.global_state.values() if t.is_floating_point())
    # Only the healthy base stations' bytes were counted up.
    assert result.history[0]["comm/bytes_up/base_station-edge"] == 2 * result.history[0]["comm/bytes_up/edge-top"]


@pytest.mark.parametrize("mode", [pytest.param("raise", marks=pytest.mark.slow),
                                  pytest.param("nan", marks=pytest.mark.slow), "die"])
def test_a_bad_base_station_in_a_worker_that_folds_its_edge_server(tmp_path, caplog, mode):
    # One edge server per base station: a fit that raises or sends NaN costs that base station;
    # a worker that dies costs the batch it was folding (here that edge server's one base station).
    injector = FaultInjector(client=1, mode=mode)
    result = run(_cfg(tmp_path, "federated.workers=2", "federated.edge_servers=3", "federated.fold_in_workers=true"),
                 callbacks=[injector])
    assert result.orchestrator.engine.fold_in_workers
    reason = {"raise": "raised RuntimeError: radio link lost",
              "nan": "update rejected: trunk.layers.0.weight holds NaN or inf",
              "die": "its worker process died (exit code 3) during the local fit (edge server 1's batch)"}[mode]
    assert [r["clients"] for r in result.history] == [2, 2]
    assert all(r["clients/dropped_reasons"] == f"1: {reason}" for r in result.history)
    assert f"base station 1 dropped: {reason}" in caplog.text
    assert result.orchestrator.rejections == {1: 2}
    assert all(torch.isfinite(t).all() for t in result.orchestrator.global_state.values() if t.is_floating_point())


def test_too_few_clients_stops_with_a_clear_error_after_saving(tmp_path):
    from fedaux.callbacks.checkpoint import load_checkpoint

    class FailFromRoundTwo(L.Callback, RoundCallback):
        def on_round_start(self, orchestrator, rnd, clients):
            self.rnd = rnd

        def on_train_start(self, trainer, pl_module):
            if self.rnd >= 2:
                raise RuntimeError("power cut")

    with pytest.raises(NotEnoughClients, match=r"round 2: 0 valid update\(s\), federated.min_clients=2; stopping after "
                                               r"round 1 \(its state is saved\). Dropped: base station 0: raised"):
        run(_cfg(tmp_path, "federated.min_clients=2"), callbacks=[FailFromRoundTwo()])
    (run_dir,) = tmp_path.glob("fedauxhmtl-*")
    assert load_checkpoint(run_dir)["round"] == 1


def test_update_validation_rejects_every_kind_of_bad_update():
    ref = {"w": torch.zeros(2, 3), "n": torch.tensor(4)}
    assert update_problem({"w": torch.ones(2, 3), "n": torch.tensor(5)}, ref) is None
    cases = {
        "returned no state": None,
        "wrong keys: missing ['n']": {"w": torch.zeros(2, 3)},
        "unexpected ['x']": {"w": torch.zeros(2, 3), "n": torch.tensor(4), "x": torch.zeros(1)},
        "w has shape (3, 2), expected (2, 3)": {"w": torch.zeros(3, 2), "n": torch.tensor(4)},
        "w has dtype torch.float64, expected torch.float32": {"w": torch.zeros(2, 3, dtype=torch.float64), "n": torch.tensor(4)},
        "w holds NaN or inf": {"w": torch.tensor([[0.0, float("inf"), 0], [0, 0, 0]]), "n": torch.tensor(4)},
    }
    for message, state in cases.items():
        assert message in update_problem(state, ref)
    assert "exceeds the bound 1" in update_problem({"w": torch.ones(2, 3), "n": torch.tensor(4)}, ref, norm_bound=1.0)


@pytest.mark.parametrize("rule", ["median", "trimmed_mean"])
def test_robust_rules_ignore_a_wild_update(rule):
    states = {c: {"w": torch.full((4,), float(c))} for c in range(4)}
    states[4] = {"w": torch.full((4,), 1e6)}  # a poisoned update that passes the finiteness check
    agg = TwoTierAggregator([0] * 5, rule=rule, trim_fraction=0.2)
    for c, state in states.items():
        agg.add(c, state, 10)
    result = agg.result().global_state["w"]
    assert result.abs().max() < 4, result
    plain = TwoTierAggregator([0] * 5)
    for c, state in states.items():
        plain.add(c, state, 10)
    assert plain.result().global_state["w"][0] > 1e5


def test_resume_refuses_a_checkpoint_from_another_config(tmp_path):
    first = run(_cfg(tmp_path, "federated.rounds=1"))
    with pytest.raises(ConfigError, match=r"another config: data.packets: 60 in the checkpoint, 40 now"):
        run(_cfg(tmp_path, "federated.rounds=2", "data.packets=40"), resume=first.run_dir)


def _train_cli(tmp_path, *args):
    return [sys.executable, "-m", "fedaux.cli_train", "--config", str(REPO / "conf" / "quic.yaml"),
            f"output_dir={tmp_path}", "federated.rounds=4", "federated.base_stations=3", "federated.edge_servers=1",
            "data.subflows_per_flow=16", "logging.progress=false", "logging.energy=false", "logging.plots=false",
            "logging.wandb.mode=disabled", *args]


@pytest.mark.slow  # slow (about 55 s on 2 cores): three CLI runs; the fast suite keeps the in-process resume tests
def test_sigkill_mid_round_then_resume_equals_an_uninterrupted_run(tmp_path):
    killed_dir, whole_dir = tmp_path / "killed", tmp_path / "whole"
    proc = subprocess.Popen(_train_cli(killed_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    deadline = time.monotonic() + 300
    metrics = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(killed_dir.glob("*/metrics.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 2:
            metrics = found[0]
            break
        time.sleep(0.05)
    assert metrics is not None, proc.stderr.read() if proc.poll() is not None else "no round finished in time"
    time.sleep(0.3)  # into round 3
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run_dir = metrics.parent
    from fedaux.callbacks.checkpoint import load_checkpoint

    assert load_checkpoint(run_dir)["round"] in (2, 3)
    assert not (run_dir / "summary.json").exists()  # it really died before the end
    resumed = subprocess.run([sys.executable, "-m", "fedaux.cli_train", "--resume", str(run_dir)],
                             capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole = subprocess.run(_train_cli(whole_dir), capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    (whole_run,) = whole_dir.glob("*/")
    assert _metrics(run_dir) == _metrics(whole_run)
    a = torch.load(run_dir / "model.pt", weights_only=True)
    b = torch.load(whole_run / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["total_MB"] == json.loads((whole_run / "summary.json").read_text())["total_MB"]
