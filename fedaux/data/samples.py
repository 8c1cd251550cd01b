"""From a flow source to tensors: the test set and one training set per base station."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fedaux.data.features import cut_windows, packet_features, short_flows_note
from fedaux.data.flows import FlowCollection
from fedaux.data.partition import Partition, mask_labels, partition_flows, split_test_flows
from fedaux.data.sources import load_flows
from fedaux.data.targets import TargetValues, compute_targets
from fedaux.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Independent random streams, so changing how one step draws never shifts another's draws.
_STREAM = {"split": 1, "partition": 2, "windows_test": 3, "windows_train": 4, "labels": 5}


def stream(seed: int, purpose: str, *extra: int) -> np.random.Generator:
    """A NumPy generator for one purpose, derived from the experiment seed."""
    return np.random.default_rng([seed, _STREAM[purpose], *extra])


@dataclass(frozen=True)
class SampleSet:
    """Windows and their targets, ready for a DataLoader.

    Attributes:
        x: ``(N, C, packets)`` float32 features, one channel per ``data.features`` entry.
        targets: ``{task_target: (N,)}`` int64 class indices (or float32 for regression).
        flow_index: ``(N,)`` index of the source flow of each sample.
    """

    x: torch.Tensor
    targets: dict[str, torch.Tensor]
    flow_index: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass
class FederatedData:
    """Everything the experiment needs from the data: clients' sets, the test set and task info."""

    flows: FlowCollection
    targets: dict[str, TargetValues]
    train_flows: np.ndarray
    test_flows: np.ndarray
    partition: Partition
    clients: list[SampleSet]
    test: SampleSet
    main_target: str
    dropped_flows: tuple[str, ...] = ()
    skipped_files: list[str] = field(default_factory=list)
    features: tuple[str, ...] = ()  # data.features: one input channel each, in this order
    packets: int = 0  # window length

    def describe(self) -> dict:
        """What a model trained on this data expects of new data: written to a run's ``data.json``."""
        return {
            "source": self.flows.provenance,
            "checksum": self.flows.checksum(),
            "packet_length": self.flows.packet_length,
            "features": list(self.features),
            "packets": self.packets,
            "class_names": {name: list(t.class_names) for name, t in self.targets.items()},
            "main_target": self.main_target,
            "train_flows": int(len(self.train_flows)),
            "test_flows": int(len(self.test_flows)),
        }

    def num_classes(self, target: str) -> int:
        return self.targets[target].num_classes

    @property
    def target_classes(self) -> dict[str, int]:
        """Per target, its number of classes (0 for a continuous target): what the model needs."""
        return {name: t.num_classes for name, t in self.targets.items()}


def make_samples(
    flows: FlowCollection,
    flow_ids: np.ndarray,
    targets: dict[str, TargetValues],
    data_cfg,
    rng: np.random.Generator,
    labeled_fraction: float | None,
    main_target: str,
    features: np.ndarray | None = None,
) -> tuple[SampleSet, tuple[str, ...]]:
    """Windows of ``flow_ids`` with every target; the main target masked to ``labeled_fraction``.

    Returns the samples and the names of flows dropped as shorter than ``data.min_packets``.
    """
    if features is None:
        features = packet_features(flows, list(data_cfg.features))
    windows = cut_windows(flows, flow_ids, data_cfg.packets, data_cfg.subflows_per_flow, data_cfg.min_packets, rng, features)
    per_task = {}
    for name, values in targets.items():
        sample_values = values.values[windows.flow_index]
        if name == main_target and labeled_fraction is not None:
            sample_values = mask_labels(sample_values, labeled_fraction, rng)
        per_task[name] = torch.from_numpy(np.ascontiguousarray(sample_values))
    return SampleSet(torch.from_numpy(windows.x), per_task, torch.from_numpy(windows.flow_index)), windows.dropped_flows


def local_client_samples(data_cfg, seed: int, client: int, class_names: Sequence[str],
                         main_target: str = "traffic_class") -> SampleSet:
    """A deployed base station's training samples from its own flows only (``data.root``).

    Every local flow is a training flow; labels index the federation's ``class_names``; windows
    and the label mask are drawn from the same random streams as in simulation, keyed by the base
    station's index.
    """
    flows, _ = load_flows(data_cfg.root, data_cfg)
    _report_short_flows(flows, data_cfg.min_packets)
    flows = flows.with_class_list(class_names)
    targets = compute_targets({name: dict(spec) for name, spec in data_cfg.targets.items()}, flows)
    samples, _ = make_samples(flows, np.arange(flows.num_flows), targets, data_cfg,
                              stream(seed, "windows_train", client), data_cfg.labeled_fraction, main_target)
    return samples


def _report_short_flows(flows: FlowCollection, min_packets: int) -> None:
    """Say how many flows are too short to cut a window from; refuse data where no flow is long enough."""
    note = short_flows_note(flows, min_packets)
    if not note:
        return
    if (flows.packet_counts() < min_packets).all():
        raise DataError(f"{note}: nothing is left to train on; set data.min_packets={int(flows.packet_counts().max())} "
                        "or lower to keep them")
    log.warning("%s: they are left out of training and testing (data.min_packets sets the minimum)", note)


def build_federated_data(
    data_cfg,
    base_stations: int,
    edge_servers: int,
    seed: int,
    main_target: str = "traffic_class",
) -> FederatedData:
    """Load flows, compute targets, hold out test flows, partition, window and mask labels.

    ``data_cfg`` is the ``data`` section of the experiment config (see ``fedaux.config``).
    """
    flows, skipped = load_flows(data_cfg.root, data_cfg)
    _report_short_flows(flows, data_cfg.min_packets)
    targets = compute_targets({name: dict(spec) for name, spec in data_cfg.targets.items()}, flows)
    if main_target not in targets:
        raise ConfigError(f"main task target {main_target!r} is not in data.targets; defined: {sorted(targets)}")

    train_flows, test_flows = split_test_flows(flows.labels, data_cfg.test_fraction, stream(seed, "split"),
                                               groups=flows.group_index() if data_cfg.split_by == "group" else None,
                                               class_names=flows.class_names)
    part = data_cfg.partition
    partition = partition_flows(
        train_flows,
        flows.labels,
        base_stations=base_stations,
        edge_servers=edge_servers,
        scheme=part.scheme,
        rng=stream(seed, "partition"),
        alpha=part.alpha,
        shards_per_client=part.shards_per_client,
    )
    features = packet_features(flows, list(data_cfg.features))

    def samples(flow_ids: np.ndarray, rng: np.random.Generator, labeled_fraction: float | None):
        return make_samples(flows, flow_ids, targets, data_cfg, rng, labeled_fraction, main_target, features)

    test, dropped = samples(test_flows, stream(seed, "windows_test"), labeled_fraction=None)
    clients = []
    all_dropped = list(dropped)
    for client, client_flows in enumerate(partition.client_flows):
        client_set, dropped = samples(client_flows, stream(seed, "windows_train", client), data_cfg.labeled_fraction)
        clients.append(client_set)
        all_dropped.extend(dropped)
    return FederatedData(
        flows=flows,
        targets=targets,
        train_flows=train_flows,
        test_flows=test_flows,
        partition=partition,
        clients=clients,
        test=test,
        main_target=main_target,
        dropped_flows=tuple(all_dropped),
        skipped_files=skipped,
        features=tuple(data_cfg.features),
        packets=int(data_cfg.packets),
    )
