"""Local fits in worker processes (``federated.workers``) give the sequential loop's weights."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from fedaux.config import load_config
from fedaux.errors import ConfigError
from fedaux.federated.engines import available_cores, worker_layout
from fedaux.train import run
from tests.conftest import REPO


def _cfg(tmp_path, *extra):
    return load_config(REPO / "conf" / "quic.yaml", [
        f"output_dir={tmp_path}", "federated.rounds=3", "federated.base_stations=9", "federated.edge_servers=2",
        "data.subflows_per_flow=4", "logging.progress=false", "logging.energy=false", "logging.plots=false",
        "logging.wandb.mode=disabled", *extra])


@contextmanager
def torch_threads(n: int):
    """The sequential loop fits with this process's threads; a worker with ``cores // workers``."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _without_times(history):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in history]


def _assert_same_run(a, b):
    assert a.orchestrator.global_state.keys() == b.orchestrator.global_state.keys()
    for key, value in a.orchestrator.global_state.items():
        assert torch.equal(value, b.orchestrator.global_state[key]), key
    assert _without_times(a.history) == _without_times(b.history)


@pytest.mark.parametrize("extra", [
    (),  # FedAuxHMTL as configured: RLW, full participation
    # local state (personal heads, DWA's history, own BatchNorm statistics), sampling
    ("federated.strategy=fedper", "model.weighting.name=dwa", "federated.fraction=0.6", "federated.batchnorm=local"),
])
def test_three_rounds_with_two_workers_equal_one_worker(tmp_path, extra):
    # Same threads for every fit (and for the evaluation, which runs in this process either way).
    with torch_threads(max(1, available_cores() // 2)):
        sequential = run(_cfg(tmp_path / "one", "federated.workers=1", *extra))
        parallel = run(_cfg(tmp_path / "two", "federated.workers=2", *extra))
    assert (sequential.orchestrator.engine.workers, parallel.orchestrator.engine.workers) == (1, 2)
    assert parallel.orchestrator.engine.threads == max(1, available_cores() // 2)
    _assert_same_run(sequential, parallel)
    # Each base station's own state (FedPer heads, DWA's loss history) came back from its worker.
    if "federated.strategy=fedper" in extra:
        states = parallel.orchestrator.client_states
        assert states and all("history" in s["weighting"] and s["batchnorm"] for s in states.values())
        for client, state in states.items():
            for namespace, entries in state.items():
                for key, value in entries.items():
                    expected = sequential.orchestrator.client_states[client][namespace][key]
                    assert torch.equal(value, expected), (client, namespace, key)


@pytest.mark.parametrize("extra", [
    (),  # FedAuxHMTL as configured
    # local state per base station (FedPer heads, DWA's history, own BatchNorm statistics), sampling
    pytest.param(("federated.strategy=fedper", "model.weighting.name=dwa", "federated.fraction=0.6",
                  "federated.batchnorm=local"), marks=pytest.mark.slow),
    # edge stages in the workers: int8 uplink decoded (with its error feedback) and clipped for central DP
    pytest.param(("federated.compression.uplink=int8", "privacy.mode=central", "privacy.noise_multiplier=0.01"),
                 marks=pytest.mark.slow),
])
def test_edge_servers_folded_in_the_workers_equal_the_sequential_fold(tmp_path, extra):
    # Each worker fits whole edge servers in one batch and folds their updates itself; the
    # weights, every base station's own state and the history must be the sequential run's.
    with torch_threads(max(1, available_cores() // 2)):
        sequential = run(_cfg(tmp_path / "one", "federated.workers=1", *extra))
        folded = run(_cfg(tmp_path / "two", "federated.workers=2", "federated.fold_in_workers=true", *extra))
    assert folded.orchestrator.engine.fold_in_workers and folded.orchestrator.engine.workers == 2
    _assert_same_run(sequential, folded)
    assert folded.orchestrator.client_states.keys() == sequential.orchestrator.client_states.keys()
    for client, state in folded.orchestrator.client_states.items():
        for namespace, entries in state.items():
            for key, value in entries.items():
                assert torch.equal(value, sequential.orchestrator.client_states[client][namespace][key])
    assert folded.orchestrator.edge_states.keys() == sequential.orchestrator.edge_states.keys()


def test_the_workers_fold_by_default_from_100_base_stations_per_worker(tmp_path, monkeypatch):
    import fedaux.federated.engines.workers as workers_module

    assert not workers_module.fold_pays(199, 2) and workers_module.fold_pays(200, 2)
    small = run(_cfg(tmp_path / "small", "federated.workers=2", "federated.rounds=1"))
    assert small.orchestrator.engine.fold_asked is None and not small.orchestrator.engine.fold_in_workers
    monkeypatch.setattr(workers_module, "FOLD_FROM_PER_WORKER", 4)  # 9 base stations, 2 workers: from 8
    assert run(_cfg(tmp_path / "many", "federated.workers=2", "federated.rounds=1")).orchestrator.engine.fold_in_workers
    # Where it cannot fold, the default quietly does not (asking for it is an error: below).
    median = run(_cfg(tmp_path / "median", "federated.workers=2", "federated.rounds=1", "federated.aggregation=median"))
    assert not median.orchestrator.engine.fold_in_workers


def test_folding_in_the_workers_needs_a_linear_rule(tmp_path):
    with pytest.raises(ConfigError, match=r"fold_in_workers=true: federated.aggregation=median .* only fedavg"):
        run(_cfg(tmp_path, "federated.workers=2", "federated.fold_in_workers=true", "federated.aggregation=median",
                 "federated.rounds=1"))


def test_a_run_with_workers_resumes_to_the_uninterrupted_weights(tmp_path):
    with torch_threads(max(1, available_cores() // 2)):
        straight = run(_cfg(tmp_path / "straight", "federated.workers=1"))
        first = run(_cfg(tmp_path / "resumed", "federated.workers=2", "federated.rounds=2"))
        resumed = run(_cfg(tmp_path / "resumed", "federated.workers=2"), resume=first.run_dir)
    _assert_same_run(straight, resumed)


def test_worker_layout_shares_the_cores_and_never_exceeds_the_round(tmp_path):
    fed = _cfg(tmp_path).federated
    fed.workers = 64
    assert worker_layout(fed, num_clients=5)["workers"] == 5  # no more processes than base stations per round
    fed.fraction = 0.2
    assert worker_layout(fed, num_clients=5) == {"workers": 1, "worker_threads": available_cores()}


def test_workers_below_one_are_refused(tmp_path):
    from fedaux.config import ConfigError

    with pytest.raises(ConfigError, match=r"federated.workers=0 must be >= 1"):
        _cfg(tmp_path, "federated.workers=0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_two_workers_share_one_gpu(tmp_path):
    """Two worker processes fit on the same GPU; CUDA kernels need not be bit-repeatable across
    processes, so the weights are compared with a tolerance."""
    gpu = ("trainer.accelerator=gpu",)
    one = run(_cfg(tmp_path / "one", "federated.workers=1", *gpu))
    two = run(_cfg(tmp_path / "two", "federated.workers=2", *gpu))
    assert two.orchestrator.engine.workers == 2
    for key, value in one.orchestrator.global_state.items():
        torch.testing.assert_close(value, two.orchestrator.global_state[key], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("local_epochs", [1, 2])
def test_a_fit_on_the_reused_trainer_equals_a_fit_on_a_new_one(tmp_path, local_epochs):
    """Every fit of a thread reuses one Trainer (fedaux.federated.client.client_trainer); what a
    base station computes must not depend on what that Trainer fitted before."""
    from fedaux.federated import client as client_module
    from fedaux.train import build_orchestrator

    orchestrator = build_orchestrator(_cfg(tmp_path, "federated.workers=1", f"federated.local_epochs={local_epochs}"))
    payload, clients = dict(orchestrator.global_state), orchestrator.data.clients

    def fit(client, new_trainer):
        if new_trainer:
            client_module._THREAD_TRAINERS.__dict__.clear()
        return orchestrator.runtime.fit(client, clients[client], payload, rnd=1, seed=100 + client).upload

    alone = fit(1, new_trainer=True)
    fit(0, new_trainer=True)
    after_another = fit(1, new_trainer=False)
    for key, value in alone.items():
        assert torch.equal(value, after_another[key]), key
