"""Config files, schema validation, overrides in both forms, and the sweep file."""

from __future__ import annotations

import pytest
import yaml

from fedaux.config import ConfigError, config_keys, load_config
from tests.conftest import REPO

CONFIGS = sorted(p for p in [*(REPO / "conf").glob("*.yaml"), *(REPO / "conf" / "ablation").glob("*.yaml")]
                 if p.name not in ("sweep.yaml",) and not p.name.startswith("bench"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "conf")))
def test_every_config_file_loads_and_builds_a_model(path):
    from fedaux.model import build_model

    cfg = load_config(path)
    model = build_model(cfg.model, {n: 5 for n in cfg.data.targets}, cfg.data.packets, len(cfg.data.features))
    assert model.main_task == cfg.model.main_task


def test_baselines_override_only_what_differs():
    fedaux, fedavg, mtdnn = (load_config(REPO / "conf" / f) for f in ("quic.yaml", "fedavg.yaml", "mtdnnfl.yaml"))
    assert list(fedaux.model.heads) == ["traffic_class", "bandwidth", "duration"]
    assert fedaux.model.weighting.name == "random"
    assert list(fedavg.model.heads) == ["traffic_class"]
    assert list(mtdnn.model.heads) == list(fedaux.model.heads) and mtdnn.model.weighting.name == "equal"
    for other in (fedavg, mtdnn):
        assert other.data == fedaux.data and other.federated == fedaux.federated


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("federated.round=3", r"federated.round.*valid keys here: \[.*'rounds'"),
        ("federated.rounds=many", r"federated.rounds.*'many'"),
        ("model.weighting.name=magic", r"model.weighting.name='magic' is not valid; choose one of \['random'"),
        ("data.partition.scheme=roundrobin", r"choose one of \['iid', 'dirichlet', 'shards'\]"),
        ("federated.edge_servers=20", "exceeds federated.base_stations"),
        ("federated.fraction=0", r"federated.fraction=0.0 must be in \(0.0, 1.0\]"),
        ("model.heads.extra={target: nope}", r"model.heads.extra.target='nope' is not a data target"),
        ("rounds", "is not of the form key=value"),
    ],
)
def test_bad_keys_and_values_name_the_key_and_the_valid_choices(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "conf" / "quic.yaml", [override])


def test_both_override_forms_are_accepted():
    a = load_config(REPO / "conf" / "quic.yaml", ["model.optimizer.lr=0.003", "--federated.rounds=4"])
    assert a.model.optimizer.lr == 0.003 and a.federated.rounds == 4


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("federated: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("extends: " + str(REPO / "conf" / "quic.yaml") + "\nfederated:\n  speed: 3\n")
    with pytest.raises(ConfigError, match=r"unknown.yaml: invalid config key 'federated.speed'"):
        load_config(unknown)


def test_every_swept_parameter_is_a_config_key():
    sweep = yaml.safe_load((REPO / "conf" / "sweep.yaml").read_text())
    assert sweep["program"] == "fedaux-train"
    assert sweep["command"][2:4] == ["--config", "conf/quic.yaml"]
    assert sweep["metric"]["name"] == "val/acc/traffic_class"
    keys = set(config_keys())
    for name, spec in sweep["parameters"].items():
        assert name in keys, name
        values = spec.get("values", [spec.get("min"), spec.get("max")])
        for value in values:
            load_config(REPO / "conf" / "quic.yaml", [f"--{name}={value}"])
    required = ["seed", "output_dir", "target_accuracy", "data.root", "data.labeled_fraction", "data.partition.scheme",
                "data.partition.alpha", "model.weighting.name", "model.optimizer.lr", "federated.rounds",
                "federated.base_stations", "federated.edge_servers", "federated.fraction", "federated.local_epochs",
                "federated.batch_size", "federated.engine"]
    assert set(required) <= keys


def test_the_bench_config_names_real_configs_and_sections():
    from fedaux.bench.config import load_bench_config, sections

    bench, _ = load_bench_config(REPO / "conf" / "bench.yaml")
    assert set(bench.default_sections) <= set(sections(bench))
    assert bench.leaderboards.quic.baseline == "fedavg" and bench.leaderboards.quic.reference == "fedauxhmtl"


def test_ablation_changes_only_the_auxiliary_heads():
    both = load_config(REPO / "conf" / "quic.yaml")
    for name in ("bandwidth_only", "duration_only", "unrelated"):
        cfg = load_config(REPO / "conf" / "ablation" / f"{name}.yaml")
        assert cfg.federated == both.federated and cfg.model.weighting == both.model.weighting
        assert cfg.model.trunk == both.model.trunk and cfg.data.labeled_fraction == both.data.labeled_fraction
