"""Every plug-in a user adds by config works on every engine (sequential, worker processes, Flower).

Each plug-in is a file of ``tests/plugins/`` loaded by path through the ``plugins`` config key, as
a user's own module would be; worker processes and Flower nodes import it again themselves. The
built-in regression losses run the same matrix. Run ``pytest tests/test_extension_matrix.py -s``
to print the plug-in x engine table of main accuracies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fedaux.config import load_config
from fedaux.train import run
from tests.conftest import REPO

PLUGINS = REPO / "tests" / "plugins"
QUICK = ["federated.rounds=1", "federated.base_stations=2", "federated.edge_servers=1", "data.subflows_per_flow=2",
         "logging.progress=false", "logging.energy=false", "logging.plots=false", "logging.wandb.mode=disabled",
         "federated.flower.torch_threads=1"]
USER_TARGETS = ["data.targets.size.fn=user_targets:mean_size", "data.targets.size.bins=[300,600,900]",
                "data.targets.rate.fn=user_targets:mean_size", "model.heads.size.target=size"]


def _regression_head(loss: str, name: str = "rate") -> list[str]:
    return [*USER_TARGETS, f"model.heads.{name}.target=rate", f"model.heads.{name}.kind=regression",
            f"model.heads.{name}.loss={loss}"]


# The built-in regression losses, one head each on the user's target (they were closures once).
BUILT_IN_LOSSES = {"rate": "mse", "rate_l1": "l1", "rate_smooth_l1": "smooth_l1"}


def _checks_regression(result):
    record = result.history[0]
    assert "val/acc/size" in record
    for head in BUILT_IN_LOSSES:
        assert record[f"val/mae/{head}"] >= 0, head


def _checks_weighting(result):
    record = result.history[0]
    assert record["train/weight/traffic_class"] == 1.0 and record["train/weight/bandwidth"] == 0.0


def _checks_codec(result):
    record = result.history[0]  # one byte a value up against four down
    assert record["comm/bytes_up/base_station-edge"] < 0.3 * record["comm/bytes_down/base_station-edge"]


def _checks_strategy(result):
    assert result.orchestrator.strategy.damping == 0.25


def _checks_stage(result):
    # Its own namespace of each base station's local state: on the server in process, on each node's disk on Flower.
    server = result.orchestrator
    if server.client_states:
        assert all(int(s["fit_counter"]["fits"]) == 1 for s in server.client_states.values())
        assert set(server.client_states) == {0, 1}
    else:
        import torch

        for client in (0, 1):
            (saved,) = (result.run_dir / "nodes" / f"base_station-{client}").glob("local-state-r*.pt")
            assert int(torch.load(saved, weights_only=True)["fit_counter::fits"]) == 1


def _checks_callback(result):
    assert result.summary["user/hooks_seen"] > 0


def _checks_fit_recorder(result):
    fits = [json.loads(line) for line in (result.run_dir.parent / "fits.jsonl").read_text().splitlines()]
    assert sorted((f["round"], f["client"]) for f in fits) == [(1, 0), (1, 1)] and all(f["steps"] > 0 for f in fits)


def _checks_ran(result):
    assert result.history[0]["clients"] == 2


def _checks_feature(result):
    assert result.orchestrator.global_state["trunk.layers.0.weight"].shape[1] == 2  # iat and log_length


def _checks_norm(result):
    assert not any("running_mean" in k for k in result.orchestrator.global_state)  # no BatchNorm left


def _checks_head(result):
    assert "heads.traffic_class.skip.weight" in result.orchestrator.global_state


def _store_copy(tmp_path):
    """The embedded flows under a suffix only the reader plug-in knows."""
    import shutil

    from fedaux.data.flows import embedded_path

    target = tmp_path / "ucdavis.flows"
    shutil.copyfile(embedded_path(), target)
    return [f"data.root={target}"]


@dataclass
class Plugin:
    name: str
    files: list[str]
    overrides: list[str]
    check: object = _checks_ran
    registered: list[tuple[str, str]] = field(default_factory=list)  # (registry module:attr, name) to undo
    setup: object = None  # tmp_path -> more overrides


MATRIX = [
    Plugin("per-packet feature", ["log_length_feature.py"], ["data.features=[iat,log_length]"], _checks_feature,
           [("fedaux.data.features:PACKET_FEATURES", "log_length")]),
    Plugin("flow reader", ["suffix_store_reader.py"], [], _checks_ran, [("fedaux.data.formats:FLOW_READERS", "flows_file")],
           setup=_store_copy),
    Plugin("partition scheme", ["alternating_partition.py"], ["data.partition.scheme=by_label_order"], _checks_ran,
           [("fedaux.data.partition:PARTITION_SCHEMES", "by_label_order")]),
    Plugin("trunk norm", ["layer_norm.py"], ["model.trunk.norm=layer"], _checks_norm, [("fedaux.model.trunk:NORMS", "layer")]),
    Plugin("optimiser", ["nadam_optimizer.py"], ["model.optimizer.name=nadam"], _checks_ran,
           [("fedaux.model.optimizers:OPTIMIZERS", "nadam")]),
    Plugin("head class", ["wide_head.py"], ["model.heads.traffic_class.cls=wide_head:WideHead"], _checks_head),
    Plugin("weighting", ["main_only_weighting.py"], ["model.weighting.name=main_only"], _checks_weighting,
           [("fedaux.model.weighting:WEIGHTINGS", "main_only")]),
    Plugin("aggregation rule", ["first_client_rule.py"], ["federated.aggregation=first_client"], _checks_ran,
           [("fedaux.federated.aggregation:AGGREGATION_RULES", "first_client")]),
    Plugin("codec (1 option)", ["levels_codec.py"], ["federated.compression.uplink=uniform_levels",
                                                      "federated.compression.options.levels=64"], _checks_codec,
           [("fedaux.federated.compression:CODECS", "uniform_levels")]),
    Plugin("strategy (1 option)", ["damped_strategy.py"], ["federated.strategy=damped_fedavg",
                                                            "federated.strategy_options.damping=0.25"], _checks_strategy,
           [("fedaux.federated.strategies:STRATEGIES", "damped_fedavg")]),
    Plugin("update stage", ["fit_counter_stage.py"], ["federated.stages=[fit_counter]"], _checks_stage,
           [("fedaux.federated.pipeline:STAGES", "fit_counter")]),
    Plugin("round callback", ["hook_recorder.py"], ["logging.callbacks=[hook_recorder:HookRecorder]"], _checks_callback),
    Plugin("Lightning callback", ["fit_recorder.py"], ["logging.callbacks=[fit_recorder:FitRecorder]"], _checks_fit_recorder),
    Plugin("targets + class head + regression heads (mse, l1, smooth_l1)", ["user_targets.py"],
           [o for head, loss in BUILT_IN_LOSSES.items() for o in _regression_head(loss, head)], _checks_regression),
]
ENGINES = {"sequential": ["federated.workers=1"], "workers": ["federated.workers=2"], "flower": ["federated.engine=flower"]}
TABLE: dict[tuple[str, str], float] = {}


@pytest.fixture
def unload_plugins():
    """Plug-in modules register names globally: remove them (and their modules) after each test."""
    loaded: list[Plugin] = []
    yield loaded.append
    from fedaux.registry import import_by_path

    for plugin in loaded:
        for registry, name in plugin.registered:
            import_by_path(registry, "test").unregister(name)
        for file in plugin.files:
            sys.modules.pop(Path(file).stem, None)


def _run(tmp_path, plugin: Plugin, engine: str):
    files = [str(PLUGINS / f) for f in plugin.files]
    plugins = "plugins=[" + ",".join(files) + "]"
    extra = plugin.setup(tmp_path) if plugin.setup is not None else []
    cfg = load_config(REPO / "conf" / "quic.yaml", [f"output_dir={tmp_path / 'out'}", plugins, *QUICK,
                                                    *ENGINES[engine], *plugin.overrides, *extra])
    return run(cfg)


def _matrix_case(tmp_path, plugin, engine, unload_plugins):
    unload_plugins(plugin)
    result = _run(tmp_path, plugin, engine)
    plugin.check(result)
    TABLE[(plugin.name, engine)] = result.history[0]["val/acc/traffic_class"]
    print(f"\n| {plugin.name} | {engine} | {TABLE[(plugin.name, engine)]:.4f} |")


@pytest.mark.parametrize("engine", ["sequential", "workers"])
@pytest.mark.parametrize("plugin", MATRIX, ids=[p.name for p in MATRIX])
def test_a_plugin_trains_a_round_on_every_local_engine(tmp_path, plugin, engine, unload_plugins):
    _matrix_case(tmp_path, plugin, engine, unload_plugins)


@pytest.mark.slow  # one Flower simulation (Ray) per plug-in
@pytest.mark.parametrize("plugin", MATRIX, ids=[p.name for p in MATRIX])
def test_a_plugin_trains_a_round_on_flower(tmp_path, plugin, unload_plugins):
    _matrix_case(tmp_path, plugin, "flower", unload_plugins)


def test_a_plugin_that_cannot_cross_a_process_boundary_is_named_before_round_one(tmp_path):
    """A closure cannot be pickled into a worker: one line naming it and its key, exit 2, no round run."""
    args = [sys.executable, "-c", "from fedaux.cli import main_train; main_train()", "--config", str(REPO / "conf" / "quic.yaml"),
            f"plugins=[{PLUGINS / 'closure_loss.py'}]", f"output_dir={tmp_path}", "federated.workers=2",
            *QUICK, *_regression_head("scaled_mse")]
    done = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "model.heads.rate.loss" in lines[0] and "'scaled_mse'" in lines[0] and "federated.workers=1" in lines[0]
    assert not list(tmp_path.glob("*/metrics.jsonl")) or not any(p.read_text() for p in tmp_path.glob("*/metrics.jsonl"))


def test_a_users_heads_config_trains_with_the_default_workers(tmp_path):
    """The config of issue 24, as a user writes it: a module beside the config named by import path
    (``my_targets:mean_size``), a binned head and a regression head; ``fedaux-train`` with the
    default ``federated.workers`` (one per core)."""
    (tmp_path / "my_targets.py").write_text((PLUGINS / "user_targets.py").read_text())
    (tmp_path / "heads.yaml").write_text(f"""extends: {REPO / "conf" / "quic.yaml"}
data:
  targets:
    size: {{fn: "my_targets:mean_size", bins: [300, 600, 900]}}
    rate: {{fn: "my_targets:mean_size"}}
model:
  heads:
    size: {{target: size}}
    rate: {{target: rate, kind: regression, loss: mse}}
""")
    # The console script, as a user runs it: its sys.path does not hold the current folder.
    script = Path(sys.executable).parent / "fedaux-train"
    assert script.is_file(), "fedaux is not installed in this environment"
    args = [str(script), "--config", "heads.yaml", f"output_dir={tmp_path / 'out'}", *QUICK]
    done = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (record,) = [json.loads(line) for line in next((tmp_path / "out").glob("*/metrics.jsonl")).read_text().splitlines()]
    assert "val/mae/rate" in record and "val/acc/size" in record

