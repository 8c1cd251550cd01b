"""A resumed Flower run equals an uninterrupted one, base stations' local state included.

What a base station keeps between rounds (SCAFFOLD's control variates, FedPer's personal heads,
top-k's error-feedback residuals, the DP-SGD accountant) stays on its Flower node, in a folder
of its own (``fedaux.federated.engines.flower.NodeStateStore``); a resumed run reads it back.
"""

from __future__ import annotations

import pytest
import torch

from fedaux.config import load_config
from fedaux.federated.engines.flower import NodeStateStore
from fedaux.train import run
from tests.conftest import REPO

CASES = {
    "scaffold": ["federated.strategy=scaffold"],
    "fedper": ["federated.strategy=fedper"],
    "topk-error-feedback": ["federated.compression.uplink=topk", "federated.compression.topk_fraction=0.1"],
    "dpsgd": ["privacy.mode=dpsgd", "privacy.noise_multiplier=0.5", "privacy.clip_norm=1.0"],
}
NAMESPACE = {"scaffold": "strategy", "fedper": "strategy", "topk-error-feedback": "uplink", "dpsgd": "dpsgd"}


def _cfg(tmp_path, folder, rounds, extra):
    return load_config(REPO / "conf" / "quic.yaml", [
        f"output_dir={tmp_path / folder}", "federated.engine=flower", f"federated.rounds={rounds}",
        "federated.base_stations=3", "federated.edge_servers=2", "data.subflows_per_flow=4",
        "logging.progress=false", "logging.energy=false", "logging.plots=false", "logging.wandb.mode=disabled",
        "federated.flower.torch_threads=1", *extra])


def test_node_state_store_reads_the_newest_earlier_round_and_keeps_two(tmp_path):
    store = NodeStateStore(tmp_path / "bs0")
    assert store.load_before(1) == {}
    for rnd in (1, 2, 3):
        store.save(rnd, {"strategy": {"w": torch.full((2,), float(rnd))}})
    assert sorted(p.name for p in (tmp_path / "bs0").iterdir()) == ["local-state-r000002.pt", "local-state-r000003.pt"]
    # Round 3 rerun after an interruption starts from round 2's state, not from its own first attempt.
    assert torch.equal(store.load_before(3)["strategy"]["w"], torch.full((2,), 2.0))
    assert torch.equal(store.load_before(4)["strategy"]["w"], torch.full((2,), 3.0))


@pytest.mark.slow  # three Flower simulations (Ray) per case
@pytest.mark.parametrize("case", list(CASES))
def test_a_resumed_flower_run_equals_an_uninterrupted_one_with_local_state(tmp_path, case):
    whole = run(_cfg(tmp_path, "whole", 2, CASES[case]))
    first = run(_cfg(tmp_path, "split", 1, CASES[case]))
    resumed = run(_cfg(tmp_path, "split", 2, CASES[case]), resume=first.run_dir)

    assert [r["round"] for r in resumed.history] == [1, 2]
    for key, value in whole.orchestrator.global_state.items():
        assert torch.equal(value, resumed.orchestrator.global_state[key]), key
    assert resumed.history[-1]["val/acc/traffic_class"] == whole.history[-1]["val/acc/traffic_class"]
    for client in range(3):
        ours = NodeStateStore(whole.run_dir / "nodes" / f"base_station-{client}").load_before(3)
        theirs = NodeStateStore(resumed.run_dir / "nodes" / f"base_station-{client}").load_before(3)
        assert ours.keys() == theirs.keys() and NAMESPACE[case] in ours, (client, sorted(ours))
        for namespace, entries in ours.items():
            assert entries.keys() == theirs[namespace].keys()
            for name, value in entries.items():
                assert torch.equal(value, theirs[namespace][name]), (client, namespace, name)
