"""Extension points: registries are the one list of valid names, plug-ins are one file each, user
callbacks come from config, the orchestrator owns its state, user errors are fedaux's own types."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import torch

from fedaux.config import ConfigError, choices, load_config
from fedaux.federated.hooks import KeepsTotals, RoundCallback
from fedaux.federated.orchestrator import FederatedOrchestrator
from fedaux.train import run
from tests.conftest import REPO

QUICK = ["federated.base_stations=2", "federated.edge_servers=1", "data.subflows_per_flow=4", "logging.progress=false",
         "logging.energy=false", "logging.plots=false", "logging.wandb.mode=disabled"]


def _cfg(tmp_path, *extra):
    return load_config(REPO / "conf" / "quic.yaml", [f"output_dir={tmp_path}", "federated.rounds=1", *QUICK, *extra])


def test_config_validation_reads_its_valid_names_from_the_registries():
    import fedaux.callbacks  # noqa: F401

    from fedaux.data.features import PACKET_FEATURES
    from fedaux.data.partition import PARTITION_SCHEMES
    from fedaux.data.sources import FLOW_READERS
    from fedaux.federated.aggregation import AGGREGATION_RULES
    from fedaux.federated.engines import ENGINES
    from fedaux.model.optimizers import OPTIMIZERS
    from fedaux.model.trunk import NORMS
    from fedaux.model.weighting import WEIGHTINGS

    valid = choices()
    registries = {"data.features": PACKET_FEATURES, "data.partition.scheme": PARTITION_SCHEMES,
                  "model.trunk.norm": NORMS, "model.weighting.name": WEIGHTINGS, "model.optimizer.name": OPTIMIZERS,
                  "federated.engine": ENGINES, "federated.aggregation": AGGREGATION_RULES}
    for key, registry in registries.items():
        assert valid[key] == registry.names(), key
    assert valid["data.format"] == ["auto", *FLOW_READERS.names()]
    # A name a registry lacks is refused with the registry's names.
    with pytest.raises(ConfigError, match=r"model.trunk.norm='layer' is not valid; choose one of \['none', 'batch', 'group'\]"):
        load_config(None, ["model.trunk.norm=layer"])
    with pytest.raises(ConfigError, match=r"data.features='rtt' is not valid"):
        load_config(None, ["data.features=[iat,rtt]"])


@pytest.fixture
def plugin():
    """Import a plug-in module from tests/plugins (it registers itself); undo it afterwards."""
    loaded = []

    def load(name, registry, entry):
        importlib.import_module(f"tests.plugins.{name}")
        loaded.append((name, registry, entry))

    yield load
    for name, registry, entry in loaded:
        registry.unregister(entry)
        sys.modules.pop(f"tests.plugins.{name}", None)


def test_a_weighting_and_an_aggregation_rule_from_one_file_each_run_by_name(tmp_path, plugin):
    from fedaux.federated.aggregation import AGGREGATION_RULES
    from fedaux.model.weighting import WEIGHTINGS

    with pytest.raises(ConfigError, match="main_only"):
        load_config(None, ["model.weighting.name=main_only"])  # not registered yet
    plugin("main_only_weighting", WEIGHTINGS, "main_only")
    plugin("first_client_rule", AGGREGATION_RULES, "first_client")
    assert "main_only" in choices()["model.weighting.name"] and "first_client" in choices()["federated.aggregation"]

    weighted = run(_cfg(tmp_path / "w", "model.weighting.name=main_only"))
    record = weighted.history[0]
    assert record["train/weight/traffic_class"] == 1.0
    assert record["train/weight/bandwidth"] == 0.0 and record["train/weight/duration"] == 0.0

    class KeepStates(RoundCallback):
        def on_client_done(self, orchestrator, rnd, update):
            self.first = self.__dict__.get("first") or {k: v.clone() for k, v in update.state.items()}

    keep = KeepStates()
    ruled = run(_cfg(tmp_path / "r", "federated.aggregation=first_client"), callbacks=[keep])
    # One edge server: the global state is base station 0's state, unaveraged.
    for key, value in ruled.orchestrator.global_state.items():
        assert torch.equal(value, keep.first[key]), key


def test_a_callback_named_in_config_receives_every_hook(tmp_path):
    # One process: the failing plug-in reads the round from on_client_start in this process, and
    # the hooks alternate start/done per base station only when fits run one after another.
    cfg = _cfg(tmp_path, "federated.rounds=2", "federated.base_stations=3", "federated.workers=1",
               "logging.callbacks=[tests.plugins.hook_recorder:HookRecorder,"
               "tests.plugins.hook_recorder:BaseStationOneFailsInRoundTwo]")
    result = run(cfg)
    (recorder,) = [c for c in result.orchestrator.callbacks if type(c).__name__ == "HookRecorder"]
    calls = recorder.calls
    per_round = lambda rnd, clients, dropped=(): [  # noqa: E731
        ("on_round_start", rnd),
        *[call for c in clients for call in (("on_client_start", rnd, c),
                                             ("on_client_dropped" if c in dropped else "on_client_done", rnd, c))],
        ("on_aggregated", rnd), ("on_evaluated", rnd), ("log_round", rnd), ("on_round_end", rnd)]
    assert calls == [("on_run_start",), *per_round(1, [0, 1, 2]), *per_round(2, [0, 1, 2], dropped=[1]),
                     ("add_to_summary",), ("on_run_end",), ("on_run_teardown", False)]
    assert result.history[1]["clients/dropped_reasons"] == "1: raised RuntimeError: radio link lost"
    assert result.summary["user/hooks_seen"] == len(calls) - 2
    with pytest.raises(ConfigError, match=r"logging.callbacks\[0\]='nope' is not valid; choose one of \[.*'timer'"):
        run(_cfg(tmp_path, "logging.callbacks=[nope]"))


class Counter(KeepsTotals, RoundCallback):
    def __init__(self, name="counter"):
        self.name, self._totals = name, {"rounds": 0}

    def on_round_end(self, orchestrator, rnd, record):
        self._totals["rounds"] += 1


class NamedCounter(Counter):
    @property
    def state_key(self):
        return f"NamedCounter[{self.name}]"


def test_orchestrator_state_covers_callbacks_by_state_key(tmp_path, small_cfg):
    from fedaux.train import build_orchestrator

    small_cfg.federated.base_stations = 2
    with pytest.raises(ValueError, match="share the state_key 'Counter'"):
        build_orchestrator(small_cfg, callbacks=[Counter("a"), Counter("b")])
    a, b = NamedCounter("a"), NamedCounter("b")
    orchestrator = build_orchestrator(small_cfg, callbacks=[a, b])
    orchestrator.run()
    a._totals["rounds"] = 5
    state = orchestrator.state_dict()
    assert state["completed_rounds"] == 1 and [r["round"] for r in state["history"]] == [1]
    assert state["callbacks"] == {"NamedCounter[a]": {"totals": {"rounds": 5}}, "NamedCounter[b]": {"totals": {"rounds": 1}}}

    fresh_a, fresh_b = NamedCounter("a"), NamedCounter("b")
    fresh = build_orchestrator(small_cfg, callbacks=[fresh_a, fresh_b])
    assert isinstance(fresh, FederatedOrchestrator) and fresh.completed_rounds == 0
    fresh.load_state_dict(state)
    assert fresh.completed_rounds == 1 and fresh_a._totals == {"rounds": 5} and fresh_b._totals == {"rounds": 1}
    assert all(torch.equal(fresh.global_state[k], v) for k, v in orchestrator.global_state.items())


def _cli(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "fedaux.cli_train", "--config", str(REPO / "conf" / "quic.yaml"),
                           f"output_dir={tmp_path}", "federated.rounds=1", *QUICK, *args],
                          capture_output=True, text=True, cwd=REPO, timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_asked_for_on_a_machine_without_one_stops_with_one_line(tmp_path):
    proc = _cli(tmp_path, "trainer.accelerator=gpu")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "fedaux-train: error: trainer.accelerator='gpu' but this machine has none (torch.cuda.is_available() is False); "
        "use trainer.accelerator=auto or cpu"]


def test_a_bug_in_a_plugin_keeps_its_traceback(tmp_path):
    proc = _cli(tmp_path, "logging.callbacks=[tests.plugins.hook_recorder:BrokenCallback]")
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "ValueError: a bug in a plug-in" in proc.stderr


def test_accelerator_cpu_gives_the_same_run_as_auto_here(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("auto picks the GPU on this machine")
    auto, cpu = run(_cfg(tmp_path / "auto")), run(_cfg(tmp_path / "cpu", "trainer.accelerator=cpu"))
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("time/")}  # noqa: E731
    assert [strip(r) for r in auto.history] == [strip(r) for r in cpu.history]


def test_callbacks_install_inside_fedaux_only(tmp_path):
    """No top-level ``callbacks`` package after install (the check runs outside the checkout,
    whose own folder would otherwise be found first on ``sys.path``)."""
    check = ("import importlib.util, sys; from fedaux.callbacks import CommunicationTracker; "
             "sys.exit(importlib.util.find_spec('callbacks') is not None)")
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_trainer_precision_reaches_the_client_trainers_and_bytes_stay_the_same(tmp_path):
    full = run(_cfg(tmp_path / "full"))
    mixed = run(_cfg(tmp_path / "bf16", "trainer.precision=bf16-mixed"))
    assert mixed.history[0]["train/global_loss"] != full.history[0]["train/global_loss"]  # bf16 really ran
    assert all(v.dtype == full.orchestrator.global_state[k].dtype for k, v in mixed.orchestrator.global_state.items())
    assert mixed.history[0]["comm/bytes_total"] == full.history[0]["comm/bytes_total"]
    with pytest.raises(ConfigError, match=r"trainer section .*precision='half'.* rejected by Lightning"):
        run(_cfg(tmp_path / "bad", "trainer.precision=half"))
