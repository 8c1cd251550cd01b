"""The experiment config's schema: typed dataclasses, and nothing else of fedaux.

Every YAML file and override is merged onto :class:`ExperimentConfig`, so an unknown key or a
wrong type is refused with the key. This module imports nothing from fedaux, so any module may
read the schema without importing what validates it: the checks that need the registries live in
:mod:`fedaux.config`, above the packages they check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf


# ---------------------------------------------------------------------------------------- schema
@dataclass
class TargetConfig:
    fn: str = MISSING  # registry name or "package.module:function"
    bins: list[float] | None = None  # class edges; None keeps the raw value (regression)


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
    # Cross-validation over flows (fedaux/data/partition.py): with folds >= 2 the flows are dealt to
    # `folds` folds (by capture group, stratified by class) and fold `fold` is the test set, in place
    # of test_fraction; 0 or 1: the single test_fraction split.
    folds: int = 0
    fold: int = 0
    # Main-task labels: a share of each base station's windows, or (with labeled_fraction: null)
    # every window of exactly labeled_flows_per_class training flows per class.
    labeled_fraction: float | None = 0.1
    labeled_flows_per_class: int | None = None
    # Main-task classes left out of training; their flows are all test flows, as unknown traffic.
    exclude_classes: list[str] = field(default_factory=list)
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
    target: str | None = None  # a name in data.targets (a contrastive head has none)
    kind: str = "classification"  # classification | regression | contrastive
    loss: str | None = None  # a LOSSES name: cross_entropy | mse | l1 | smooth_l1; default by kind
    out_features: int | None = None  # inferred from the target when None (contrastive: 64)
    hidden: int = 0  # width of a hidden layer in the head; 0 for a linear head
    cls: str | None = None  # import path of a custom head class
    # contrastive heads only (fedaux/model/semi.py): NT-Xent temperature, and the augmentations that
    # make each of a window's two views (AUGMENTATIONS names or {name: ..., option: value}; None:
    # model.consistency.strong)
    temperature: float = 0.5
    augment: list[Any] | None = None


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
class ConsistencyConfig:
    """Pseudo-labels on unlabelled windows, FixMatch-style (fedaux/model/semi.py); ``weight: 0`` is off.

    Each list holds AUGMENTATIONS names (fedaux/data/augment.py) or ``{name: ..., option: value}``,
    applied in order."""

    weight: float = 0.0  # weight of the pseudo-label loss, added to the main task's loss
    threshold: float = 0.95  # a weak view's softmax max must reach it to become a pseudo-label
    weak: list[Any] = field(default_factory=lambda: [{"name": "window_shift", "max_shift": 4},
                                                     {"name": "iat_jitter", "sigma": 0.05}])
    strong: list[Any] = field(default_factory=lambda: [{"name": "window_shift", "max_shift": 16},
                                                       {"name": "packet_drop", "p": 0.2},
                                                       {"name": "iat_jitter", "sigma": 0.3},
                                                       {"name": "length_noise", "std_bytes": 50.0}])


@dataclass
class UnknownConfig:
    """Unknown-traffic scores (fedaux/unknown.py): which one fedaux-predict uses, and their options."""

    score: str = "msp"  # an UNKNOWN_SCORES name: msp | energy | mahalanobis | relative_mahalanobis
    temperature: float = 1.0  # energy: T in -T logsumexp(logits / T)
    shrinkage: float | None = None  # mahalanobis: covariance shrinkage in [0, 1]; null: chosen by OAS


@dataclass
class ModelConfig:
    main_task: str = "traffic_class"
    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    heads: dict[str, HeadConfig | None] = field(
        default_factory=lambda: {"traffic_class": HeadConfig(target="traffic_class")}
    )
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    unknown: UnknownConfig = field(default_factory=UnknownConfig)


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
    options: dict[str, Any] = field(default_factory=dict)  # a user codec's options, passed to its from_options


@dataclass
class FederatedConfig:
    engine: str = "inprocess"  # an ENGINES name: inprocess | flower
    rounds: int = 30
    # The first rounds train the auxiliary heads alone (main-task loss off), then every head
    # (Rezaei & Liu's pre-training then fine-tuning, federated; fedaux/federated/phases.py).
    pretrain_rounds: int = 0
    base_stations: int = 10
    edge_servers: int = 2
    fraction: float = 1.0
    local_epochs: int = 1
    batch_size: int = 32
    eval_batch_size: int = 1024
    gradient_clip_val: float | None = 1.0
    client_timeout_s: float | None = None  # drop a base station that has not answered by then
    # In-process engine: local fits at once, each in a worker process with cores // workers torch
    # threads (fedaux/federated/engines/workers.py); 1 fits them one after another in the main process.
    # null: the machine's cores. Results do not depend on it beyond the threads per fit.
    workers: int | None = None
    # Worker processes take whole edge servers and fold their base stations' updates themselves
    # (fedaux/federated/edge_fold.py): the same weights bit for bit, one sum per edge server sent to
    # the main process instead of every update. Needs the fedavg rule; balances load by edge server.
    # null (auto): on where it can be and a round has >= 100 base stations per worker.
    fold_in_workers: bool | None = None
    # How a local fit runs: auto (fedaux.federated.fit_loop's direct loop of the LightningModule's
    # hooks where it computes what Trainer.fit does, bit for bit, without the Trainer's per-fit cost;
    # Lightning's Trainer otherwise) | trainer (always Lightning's Trainer).
    fit_loop: str = "auto"
    # BatchNorm running statistics: federated (averaged with the model) | local (FedBN: each base
    # station keeps its own; never sent, so never clipped or noised; the method is then scored by
    # the base stations' own models, personal/acc/*). GroupNorm instead: model.trunk.norm=group.
    batchnorm: str = "federated"
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
    strategy_options: dict[str, Any] = field(default_factory=dict)  # a user strategy's options (read by its class)
    aggregation: str = "fedavg"  # an AGGREGATION_RULES name: fedavg | median | trimmed_mean (at the edge tier)
    # Extra update stages (fedaux/federated/pipeline/): STAGES names or "package.module:Class"; each
    # runs in the slot its class names, after the built-in stages of that slot.
    stages: list[str] = field(default_factory=list)
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
    # Modules imported before the config is checked, so the plug-ins they register by name (a
    # weighting, a strategy, a codec, a stage, ...) are valid values: "package.module" or a path to
    # a .py file (relative to the current folder). Worker processes and Flower nodes import them too.
    plugins: list[str] = field(default_factory=list)
    seed: int = 0
    output_dir: str = "outputs"
    target_accuracy: float = 0.8
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def config_from_text(text: str) -> DictConfig:
    """A config written by fedaux itself (a run folder's ``config.yaml``, a Flower message) on the schema,
    unchecked: the process that wrote it checked it. Use :func:`fedaux.config.load_config_text` for text
    from anywhere else."""
    cfg = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), OmegaConf.create(text))
    if not isinstance(cfg, DictConfig):  # merged onto the structured ExperimentConfig: always a mapping
        raise TypeError(f"a fedaux config must be a mapping, got {type(cfg).__name__}")
    cfg.model.heads = {name: head for name, head in cfg.model.heads.items() if head is not None}
    return cfg
