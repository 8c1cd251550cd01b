"""The experiment config: a structured schema, YAML files that extend each other, and overrides.

Every YAML file is merged onto the schema below, so an unknown key or a wrong type stops with the
key, the bad value and what would be valid. A file may start with ``extends: other.yaml`` (a path
relative to itself) and then state only what differs. A head set to ``null`` is removed, which is
how a baseline drops the auxiliary heads of the file it extends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedaux.errors import ConfigError

__all__ = ["ConfigError", "ExperimentConfig", "choices", "config_keys", "load_config", "load_config_text", "validate"]


# ---------------------------------------------------------------------------------------- schema
@dataclass
class TargetConfig:
    fn: str = MISSING  # registry name or "package.module:function"
    bins: list[float] | None = None  # class edges; None keeps the raw value (regression)


log = logging.getLogger(__name__)

@dataclass
class PartitionConfig:
    scheme: str = "dirichlet"  # a PARTITION_SCHEMES name: iid | dirichlet | shards
    alpha: float = 0.5
    shards_per_client: int = 2


@dataclass
class CaptureConfig:
    """How packet captures become flows (``data.root`` a pcap/pcapng file or a folder of them)."""

    idle_timeout_s: float = 60.0  # a flow ends after this much silence, as common flow meters do
    filter: str = ""  # keep matching flows, tcpdump-style: "udp port 443"
    length: str = "frame"  # what a packet length counts: frame | ip | payload (UC Davis: frame)


@dataclass
class DataConfig:
    root: str | None = None  # None: embedded store; a raw folder or a store file otherwise
    format: str = "auto"  # auto (detected from the content) or a FLOW_READERS name
    on_bad_flow: str = "error"  # error | skip
    packets: int = 60
    features: list[str] = field(default_factory=lambda: ["iat", "signed_length", "elapsed"])  # PACKET_FEATURES names, one channel each
    subflows_per_flow: int = 32
    min_packets: int = 10
    test_fraction: float = 0.2
    labeled_fraction: float = 0.1
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    split_by: str = "group"  # group: flows of one capture stay on one side of the test split | flow
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    # The paper's derived targets; bins in bytes/s and seconds. Add more here or by config.
    targets: dict[str, TargetConfig] = field(
        default_factory=lambda: {
            "traffic_class": TargetConfig(fn="traffic_class"),
            "bandwidth": TargetConfig(fn="bandwidth", bins=[1e4, 5e4, 1e5, 1e6]),
            "duration": TargetConfig(fn="duration", bins=[10.0, 30.0, 60.0]),
        }
    )


@dataclass
class TrunkConfig:
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    convs_per_block: int = 2
    kernel_size: int = 3
    dense: list[int] = field(default_factory=lambda: [256, 256])
    dropout: float = 0.0
    norm: str = "batch"  # a NORMS name: none | batch | group, after each convolution
    cls: str | None = None  # import path of another trunk class taking the same arguments


@dataclass
class HeadConfig:
    target: str = MISSING  # a name in data.targets
    kind: str = "classification"  # classification | regression
    loss: str | None = None  # a LOSSES name: cross_entropy | mse | l1 | smooth_l1; default by kind
    out_features: int | None = None  # inferred from the target when None
    hidden: int = 0  # width of a hidden layer in the head; 0 for a linear head
    cls: str | None = None  # import path of a custom head class


@dataclass
class WeightingConfig:
    # A WEIGHTINGS name: random | equal | fixed | uncertainty | dwa | famo | mgda | pcgrad | cagrad | nash_mtl | upgrad
    name: str = "random"
    weights: dict[str, float] = field(default_factory=dict)  # fixed: weight per task
    draw_main: bool = False  # random: draw the main task's weight too
    std: float = 1.0  # random: std of the Gaussian draws
    temperature: float = 2.0  # dwa
    c: float = 0.4  # cagrad: radius of the conflict-averse step around the mean gradient
    famo_lr: float = 0.025  # famo: learning rate of the task logits
    famo_gamma: float = 0.001  # famo: weight decay of the task logits


@dataclass
class OptimizerConfig:
    name: str = "adam"  # an OPTIMIZERS name: adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only


@dataclass
class ModelConfig:
    main_task: str = "traffic_class"
    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    heads: dict[str, HeadConfig | None] = field(
        default_factory=lambda: {"traffic_class": HeadConfig(target="traffic_class")}
    )
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)


@dataclass
class FlowerConfig:
    num_cpus: float = 1.0  # CPU cores Ray reserves for each simulated base station
    max_workers: int | None = None  # cores Ray may use in all; None: every core of the machine
    torch_threads: int = 1  # torch threads inside each simulated base station
    verbose: bool = False  # Flower's own log
    timeout_s: float = 3600.0  # how long the server waits for a round's replies


@dataclass
class CompressionConfig:
    """How updates travel (fedaux/federated/compression.py); ``none`` sends float32 as before."""

    uplink: str = "none"  # base station -> edge server, a CODECS name: none | fp16 | int8 | topk
    downlink: str = "none"  # global state to the edge servers and base stations: none | fp16 | int8
    topk_fraction: float = 0.01  # topk: share of each tensor's entries sent
    error_feedback: bool = True  # uplink: add what compression dropped to the next round's update


@dataclass
class FederatedConfig:
    engine: str = "inprocess"  # an ENGINES name: inprocess | flower
    rounds: int = 30
    base_stations: int = 10
    edge_servers: int = 2
    fraction: float = 1.0
    local_epochs: int = 1
    batch_size: int = 32
    eval_batch_size: int = 1024
    gradient_clip_val: float | None = 1.0
    client_timeout_s: float | None = None  # drop a base station that has not answered by then
    # In-process engine: local fits at once, each in a worker process with cores // workers torch
    # threads (fedaux/federated/workers.py); 1 fits them one after another in the main process.
    # null: the machine's cores. Results do not depend on it beyond the threads per fit.
    workers: int | None = None
    min_clients: int = 1  # fewer valid updates in a round stops the run (after the last checkpoint)
    update_norm_bound: float | None = None  # reject updates farther than this (L2) from the global state
    # A STRATEGIES name: fedavg | fedprox | scaffold | fedavgm | fedadam | fedper | fedrep (fedaux/federated/strategies/)
    strategy: str = "fedavg"
    proximal_mu: float = 0.01  # fedprox: weight of the proximal term mu/2 ||w - w_global||^2
    server_lr: float | None = None  # fedavgm / fedadam: top-tier learning rate (None: 1.0 / 0.01)
    server_momentum: float = 0.9  # fedavgm
    server_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])  # fedadam
    server_tau: float = 1e-3  # fedadam: adaptivity (Adam's eps)
    head_epochs: int = 1  # fedrep: epochs on the heads alone before the trunk's local_epochs
    aggregation: str = "fedavg"  # an AGGREGATION_RULES name: fedavg | median | trimmed_mean (at the edge tier)
    trim_fraction: float = 0.1  # trimmed_mean: share dropped at each end
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    flower: FlowerConfig = field(default_factory=FlowerConfig)  # used when engine is flower


@dataclass
class PrivacyConfig:
    """Client-level differential privacy (fedaux/federated/privacy.py)."""

    mode: str = "none"  # none | central (noise at the edge servers) | local (noise at each base station)
    clip_norm: float = 1.0  # L2 bound on each base station's update
    noise_multiplier: float = 1.0  # noise std over clip_norm
    delta: float = 1e-5  # epsilon is reported at this delta
    max_epsilon: float | None = None  # stop before a round would take epsilon above it


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "fedaux"
    entity: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    energy: bool = True
    progress: bool = True
    plots: bool = True
    callbacks: list[str] = field(default_factory=list)  # extra callbacks: CALLBACKS names or "pkg.mod:Class"


@dataclass
class TrainerConfig:
    """Passed to every client Trainer and the evaluator (Lightning's flags of the same names)."""

    accelerator: str = "auto"  # auto | cpu | gpu | mps
    devices: str = "1"  # one device: "1" or an index such as "0," (a base station fits on one device)
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed | ...


@dataclass
class ExperimentConfig:
    name: str = "fedauxhmtl"
    seed: int = 0
    output_dir: str = "outputs"
    target_accuracy: float = 0.8
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


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
    from fedaux.federated.compression import CODECS
    from fedaux.federated.engines import ENGINES
    from fedaux.federated.privacy import PRIVACY_MODES
    from fedaux.federated.strategies import STRATEGIES
    from fedaux.model.optimizers import OPTIMIZERS
    from fedaux.model.trunk import NORMS
    from fedaux.model.weighting import WEIGHTINGS

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
        "federated.engine": ENGINES.names(),
        "federated.aggregation": AGGREGATION_RULES.names(),
        "federated.strategy": STRATEGIES.names(),
        "privacy.mode": list(PRIVACY_MODES),
        "federated.compression.uplink": CODECS.names(),
        "federated.compression.downlink": [n for n in CODECS.names() if n != "topk"],
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
        return OmegaConf.merge(_read_yaml(path.parent / str(base), (*chain, path)), node)
    except (OmegaConfBaseException, TypeError, ValueError) as err:
        raise ConfigError(f"{path}: does not fit the file it extends, {base} ({str(err).splitlines()[0]})") from None


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, DictConfig):
        return []
    keys = []
    for key in node.keys():
        full = f"{prefix}{key}"
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
    cfg.model.heads = {name: head for name, head in cfg.model.heads.items() if head is not None}
    apply_implied(cfg)
    validate(cfg)
    return cfg


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
    heads = {name: head for name, head in cfg.model.heads.items() if head is not None}
    cfg.model.heads = heads
    apply_implied(cfg)
    validate(cfg)
    return cfg


def apply_implied(cfg: DictConfig) -> None:
    """Settings one choice implies: DP-SGD needs per-sample gradients, which BatchNorm mixes
    across the batch, so ``privacy.mode=dpsgd`` replaces it with GroupNorm (Opacus' advice)."""
    if cfg.privacy.mode == "dpsgd" and cfg.model.trunk.norm == "batch":
        log.info("privacy.mode=dpsgd: model.trunk.norm batch -> group (per-sample gradients need it)")
        cfg.model.trunk.norm = "group"


def validate(cfg: DictConfig) -> None:
    """Checks the schema's types cannot express: choices, ranges and cross-references."""
    if cfg.federated.compression.downlink == "topk":
        raise ConfigError("federated.compression.downlink='topk' is not supported: decoding a top-k global update needs "
                          "the previous global state, which base stations sampled out of a round lack; choose none, "
                          "fp16 or int8 (topk is an uplink codec)")
    for key, valid in choices().items():
        value = OmegaConf.select(cfg, key)
        for item in (value if OmegaConf.is_list(value) else [value]):
            if item not in valid:
                raise ConfigError(f"{key}={item!r} is not valid; choose one of {valid}")
    fraction = cfg.federated.compression.topk_fraction
    if not 0 < fraction <= 1:
        raise ConfigError(f"federated.compression.topk_fraction={fraction} must be in (0, 1]")
    if cfg.privacy.mode == "dpsgd" and cfg.model.weighting.name in ("uncertainty", "mgda", "pcgrad", "cagrad", "nash_mtl", "upgrad"):
        raise ConfigError(f"privacy.mode=dpsgd with model.weighting.name={cfg.model.weighting.name!r}: Opacus computes "
                          "per-sample gradients of one loss; use a loss weighting without parameters (random, equal, "
                          "fixed, dwa, famo)")
    if cfg.privacy.mode == "central" and cfg.federated.aggregation != "fedavg":
        raise ConfigError(f"privacy.mode=central needs federated.aggregation=fedavg (got "
                          f"{cfg.federated.aggregation!r}): the noise is calibrated to one update's weight in an average")
    if cfg.data.capture.idle_timeout_s <= 0:
        raise ConfigError(f"data.capture.idle_timeout_s={cfg.data.capture.idle_timeout_s} must be > 0")
    from fedaux.data.flow_filter import compile_filter

    compile_filter(cfg.data.capture.filter)
    if not cfg.data.features:
        raise ConfigError(f"data.features is empty; choose one or more of {choices()['data.features']}")
    positive = ["data.packets", "data.subflows_per_flow", "federated.rounds", "federated.base_stations",
                "federated.edge_servers", "federated.local_epochs", "federated.batch_size", "federated.eval_batch_size"]
    for key in positive:
        if OmegaConf.select(cfg, key) < 1:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)} must be >= 1")
    if cfg.federated.workers is not None and cfg.federated.workers < 1:
        raise ConfigError(f"federated.workers={cfg.federated.workers} must be >= 1 (1: fit base stations one after "
                          "another in the main process; null: one worker per core)")
    if cfg.federated.edge_servers > cfg.federated.base_stations:
        raise ConfigError(
            f"federated.edge_servers={cfg.federated.edge_servers} exceeds federated.base_stations="
            f"{cfg.federated.base_stations}; every edge server needs a base station"
        )
    for key, lo, hi in [("federated.fraction", 0.0, 1.0), ("data.labeled_fraction", 0.0, 1.0),
                        ("data.test_fraction", 0.0, 0.99), ("target_accuracy", 0.0, 1.0)]:
        value = OmegaConf.select(cfg, key)
        if not lo <= value <= hi or (key == "federated.fraction" and value == 0):
            raise ConfigError(f"{key}={value} must be in {'(' if key == 'federated.fraction' else '['}{lo}, {hi}]")
    if cfg.model.optimizer.lr <= 0:
        raise ConfigError(f"model.optimizer.lr={cfg.model.optimizer.lr} must be > 0")
    if not cfg.data.targets:
        raise ConfigError("data.targets is empty; define at least the main task's target (traffic_class)")
    if cfg.model.main_task not in cfg.model.heads:
        raise ConfigError(f"model.main_task={cfg.model.main_task!r} has no head; heads: {sorted(cfg.model.heads)}")
    for name, head in cfg.model.heads.items():
        if head.target not in cfg.data.targets:
            raise ConfigError(
                f"model.heads.{name}.target={head.target!r} is not a data target; defined: {sorted(cfg.data.targets)}"
            )
        from fedaux.model.losses import LOSSES

        if head.loss is not None and head.loss not in LOSSES:
            raise ConfigError(f"model.heads.{name}.loss={head.loss!r} is not valid; choose one of {LOSSES.names()}")
        if head.kind not in ("classification", "regression"):
            raise ConfigError(f"model.heads.{name}.kind={head.kind!r} is not valid; choose 'classification' or 'regression'")


def config_keys() -> list[str]:
    """Every dotted key of the schema (dict-valued sections such as heads list only their name)."""
    return _flat_keys(OmegaConf.structured(ExperimentConfig))
