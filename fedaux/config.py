"""The experiment config: a structured schema, YAML files that extend each other, and overrides.

Every YAML file is merged onto the schema below, so an unknown key or a wrong type stops with the
key, the bad value and what would be valid. A file may start with ``extends: other.yaml`` (a path
relative to itself) and then state only what differs. A head set to ``null`` is removed, which is
how a baseline drops the auxiliary heads of the file it extends.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedaux.errors import ConfigError
from fedaux.plugins import import_plugins, resolve_plugin_paths
from fedaux.schema import (  # noqa: F401  (the schema's classes, re-exported for callers of this module)
    CaptureConfig,
    CompressionConfig,
    ConsistencyConfig,
    DataConfig,
    ExperimentConfig,
    FederatedConfig,
    FlowerConfig,
    HeadConfig,
    LoggingConfig,
    ModelConfig,
    OptimizerConfig,
    PartitionConfig,
    PrivacyConfig,
    TargetConfig,
    TrainerConfig,
    TrunkConfig,
    UnknownConfig,
    WandbConfig,
    WeightingConfig,
)

__all__ = ["ConfigError", "ExperimentConfig", "choices", "config_keys", "import_plugins", "load_config",
           "load_config_text", "validate"]

log = logging.getLogger(__name__)

# Components that check their own options: each module has ``check_config(cfg)``, the one place its
# rules live. ``validate`` calls them after the checks every key shares (choices, ranges).
COMPONENT_CHECKS = ("fedaux.data.capture", "fedaux.data.partition", "fedaux.model.factory", "fedaux.federated.engines",
                    "fedaux.federated.compression", "fedaux.federated.privacy", "fedaux.federated.pipeline",
                    "fedaux.model.semi", "fedaux.federated.phases", "fedaux.unknown")


def choices() -> dict[str, list[str]]:
    """Valid values of every key that names an implementation, read from where they are defined
    (the registries, and the modules owning the other fixed sets). Imported here, not at the top,
    so reading a config does not load torch until it is validated."""
    import fedaux.callbacks  # noqa: F401  (registers the built-in callbacks)
    from fedaux.callbacks.wandb_logger import WANDB_MODES
    from fedaux.data.features import PACKET_FEATURES
    from fedaux.data.flows import PACKET_LENGTHS
    from fedaux.data.partition import PARTITION_SCHEMES
    from fedaux.data.reader import ON_BAD_FLOW
    from fedaux.data.sources import format_names
    from fedaux.federated.aggregation import AGGREGATION_RULES
    from fedaux.federated.client import ACCELERATORS
    from fedaux.federated.compression import CODECS, downlink_codec_names
    from fedaux.federated.engines import ENGINES
    from fedaux.federated.fit_loop import FIT_LOOPS
    from fedaux.federated.privacy import PRIVACY_MODES
    from fedaux.federated.strategies import BATCHNORM_MODES, STRATEGIES
    from fedaux.model.optimizers import OPTIMIZERS
    from fedaux.model.trunk import NORMS
    from fedaux.model.weighting import WEIGHTINGS
    from fedaux.unknown import UNKNOWN_SCORES

    return {
        "data.format": format_names(),
        "data.on_bad_flow": list(ON_BAD_FLOW),
        "data.split_by": ["group", "flow"],
        "data.capture.length": list(PACKET_LENGTHS),
        "data.features": PACKET_FEATURES.names(),
        "data.partition.scheme": PARTITION_SCHEMES.names(),
        "model.trunk.norm": NORMS.names(),
        "model.weighting.name": WEIGHTINGS.names(),
        "model.optimizer.name": OPTIMIZERS.names(),
        "model.unknown.score": UNKNOWN_SCORES.names(),
        "federated.engine": ENGINES.names(),
        "federated.fit_loop": list(FIT_LOOPS),
        "federated.batchnorm": list(BATCHNORM_MODES),
        "federated.aggregation": AGGREGATION_RULES.names(),
        "federated.strategy": STRATEGIES.names(),
        "privacy.mode": list(PRIVACY_MODES),
        "federated.compression.uplink": CODECS.names(),
        "federated.compression.downlink": downlink_codec_names(),
        "trainer.accelerator": list(ACCELERATORS),
        "logging.wandb.mode": list(WANDB_MODES),
    }


# ---------------------------------------------------------------------------------------- loading
def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> DictConfig:
    """Read a YAML file, resolving its ``extends:`` chain (base first)."""
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{path}: 'extends' forms a cycle: {' -> '.join(str(p) for p in (*chain, path))}")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        node = OmegaConf.load(path)
    except Exception as err:  # YAML syntax errors come in several exception types
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    base = node.pop("extends", None)
    if base is None:
        return node
    try:
        merged = OmegaConf.merge(_read_yaml(path.parent / str(base), (*chain, path)), node)
    except (OmegaConfBaseException, TypeError, ValueError) as err:
        raise ConfigError(f"{path}: does not fit the file it extends, {base} ({str(err).splitlines()[0]})") from None
    if not isinstance(merged, DictConfig):
        raise ConfigError(f"{path}: merged with the file it extends, {base}, is not a mapping of config keys")
    return merged


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, DictConfig):
        return []
    keys = []
    for key in node.keys():
        full = f"{prefix}{key!s}"
        keys.append(full)
        keys.extend(_flat_keys(node._get_node(key), f"{full}."))
    return keys


def _explain(err: OmegaConfBaseException, schema: DictConfig, source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or ""
    msg = getattr(err, "msg", None) or str(err)
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    try:
        siblings = list(OmegaConf.select(schema, parent).keys()) if parent else list(schema.keys())
    except Exception:
        siblings = []
    hint = f"; valid keys here: {sorted(map(str, siblings))}" if "not in struct" in msg or "Key '" in msg else ""
    return ConfigError(f"{source}: invalid config key {key!r}: {msg.splitlines()[0]}{hint}")


def normalise_overrides(overrides: list[str]) -> list[str]:
    """Accept ``key=value`` and the W&B agent's ``--key=value`` alike."""
    out = []
    for item in overrides:
        item = item[2:] if item.startswith("--") else item
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        out.append(item)
    return out


def load_config_text(text: str, source: str = "config text") -> DictConfig:
    """A full config from YAML text (as a run folder's ``config.yaml`` or a Flower message holds it)."""
    try:
        node = OmegaConf.create(text)
        cfg = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), node)
    except OmegaConfBaseException as err:
        raise _explain(err, OmegaConf.structured(ExperimentConfig), source) from None
    except Exception as err:  # YAML syntax or a value that does not fit the schema
        raise ConfigError(f"{source}: not a valid fedaux config ({err})") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{source}: expected a mapping of config keys at the top level")
    return _complete(cfg)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Schema defaults, then the YAML file (with its ``extends`` chain), then ``key=value`` overrides.

    Raises:
        ConfigError: naming the file or override, the key, the bad value and the valid choices.
    """
    schema = OmegaConf.structured(ExperimentConfig)
    cfg = schema.copy()
    sources: list[tuple[str, DictConfig]] = []
    if path is not None:
        sources.append((str(path), _read_yaml(Path(path))))
    for item in normalise_overrides(list(overrides)):
        try:
            sources.append((f"override {item!r}", OmegaConf.from_dotlist([item])))
        except Exception as err:
            raise ConfigError(f"override {item!r}: {err}") from None
    for source, node in sources:
        try:
            cfg = OmegaConf.merge(cfg, node)
        except OmegaConfBaseException as err:
            raise _explain(err, schema, source) from None
        except (TypeError, ValueError) as err:  # e.g. a list given where the schema has a mapping
            raise ConfigError(f"{source}: a value does not fit the config schema ({err})") from None
    return _complete(cfg)


def _complete(cfg: DictConfig) -> DictConfig:
    """The steps after merging, for a file and for text alike: drop ``null`` heads, make plug-in paths
    absolute (worker processes and nodes import them too), apply what choices imply, import the
    plug-ins, then validate."""
    cfg.model.heads = {name: head for name, head in cfg.model.heads.items() if head is not None}
    cfg.plugins = resolve_plugin_paths(list(cfg.plugins))
    apply_implied(cfg)
    import_plugins(list(cfg.plugins))
    validate(cfg)
    return cfg


def apply_implied(cfg: DictConfig) -> None:
    """Settings one choice implies: DP-SGD needs per-sample gradients, which BatchNorm mixes
    across the batch, so ``privacy.mode=dpsgd`` replaces it with GroupNorm (Opacus' advice)."""
    if cfg.privacy.mode == "dpsgd" and cfg.model.trunk.norm == "batch":
        log.info("privacy.mode=dpsgd: model.trunk.norm batch -> group (per-sample gradients need it)")
        cfg.model.trunk.norm = "group"


def validate(cfg: DictConfig) -> None:
    """Checks the schema's types cannot express: each component's own rules (:data:`COMPONENT_CHECKS`,
    first: they give the most specific reason), then choices, ranges and cross-references."""
    for module in COMPONENT_CHECKS:
        importlib.import_module(module).check_config(cfg)
    for key, valid in choices().items():
        value = OmegaConf.select(cfg, key)
        for item in (value if OmegaConf.is_list(value) else [value]):
            if item not in valid:
                raise ConfigError(f"{key}={item!r} is not valid; choose one of {valid}")
    if not cfg.data.features:
        raise ConfigError(f"data.features is empty; choose one or more of {choices()['data.features']}")
    positive = ["data.packets", "data.subflows_per_flow", "federated.rounds", "federated.base_stations",
                "federated.edge_servers", "federated.local_epochs", "federated.batch_size", "federated.eval_batch_size"]
    for key in positive:
        if OmegaConf.select(cfg, key) < 1:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)} must be >= 1")
    for key, lo, hi in [("federated.fraction", 0.0, 1.0), ("data.labeled_fraction", 0.0, 1.0),
                        ("data.test_fraction", 0.0, 0.99), ("target_accuracy", 0.0, 1.0)]:
        value = OmegaConf.select(cfg, key)
        if value is None and key == "data.labeled_fraction":
            continue  # null: labels by data.labeled_flows_per_class (fedaux.data.partition.check_config)
        if not lo <= value <= hi or (key == "federated.fraction" and value == 0):
            raise ConfigError(f"{key}={value} must be in {'(' if key == 'federated.fraction' else '['}{lo}, {hi}]")
    if cfg.model.optimizer.lr <= 0:
        raise ConfigError(f"model.optimizer.lr={cfg.model.optimizer.lr} must be > 0")
    if not cfg.data.targets:
        raise ConfigError("data.targets is empty; define at least the main task's target (traffic_class)")


def config_keys() -> list[str]:
    """Every dotted key of the schema (dict-valued sections such as heads list only their name)."""
    return _flat_keys(OmegaConf.structured(ExperimentConfig))
