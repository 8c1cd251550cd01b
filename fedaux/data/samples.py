"""From a flow source to tensors: the test set and one training set per base station."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fedaux.data.features import cut_windows, packet_features, short_flows_note
from fedaux.data.flows import FlowCollection
from fedaux.data.partition import Partition, choose_labeled_flows, mask_labels, partition_flows, split_test_flows
from fedaux.data.sources import load_flows
from fedaux.data.targets import TargetValues, compute_targets
from fedaux.errors import ConfigError, DataError
from fedaux.labels import IGNORE_INDEX

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
    excluded_classes: tuple[str, ...] = ()  # data.exclude_classes: main-task classes left out of training
    # Test flows of the excluded classes that give windows: unknown traffic, their main label
    # IGNORE_INDEX in ``test`` (left out of the held-out accuracy), indices into ``flows``.
    unknown_test_flows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def unknown_test_windows(self) -> torch.Tensor:
        """``(N_test,)`` bool: which windows of ``test`` come from :attr:`unknown_test_flows`."""
        return torch.from_numpy(np.isin(self.test.flow_index.numpy(), self.unknown_test_flows))

    def describe(self) -> dict:
        """What a model trained on this data expects of new data: written to a run's ``data.json``.

        ``excluded_classes`` and ``unknown_test_flows`` (flow names) say which held-out flows are
        traffic of classes the model never trained on."""
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
            "excluded_classes": list(self.excluded_classes),
            "unknown_test_flows": [self.flows.flow_names[i] for i in self.unknown_test_flows],
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
    labeled_flows: np.ndarray | None = None,
) -> tuple[SampleSet, tuple[str, ...]]:
    """Windows of ``flow_ids`` with every target; the main target masked to ``labeled_fraction``
    of the windows or, with ``labeled_flows``, kept on every window of those flows and masked on
    the others (``labeled_fraction`` then unused). Both None: every window keeps its label.

    Returns the samples and the names of flows dropped as shorter than ``data.min_packets``.
    """
    if features is None:
        features = packet_features(flows, list(data_cfg.features))
    windows = cut_windows(flows, flow_ids, data_cfg.packets, data_cfg.subflows_per_flow, data_cfg.min_packets, rng, features)
    per_task = {}
    for name, values in targets.items():
        sample_values = values.values[windows.flow_index]
        if name == main_target and labeled_flows is not None:
            sample_values = np.where(np.isin(windows.flow_index, labeled_flows), sample_values, IGNORE_INDEX)
        elif name == main_target and labeled_fraction is not None:
            sample_values = mask_labels(sample_values, labeled_fraction, rng)
        per_task[name] = torch.from_numpy(np.ascontiguousarray(sample_values))
    return SampleSet(torch.from_numpy(windows.x), per_task, torch.from_numpy(windows.flow_index)), windows.dropped_flows


def local_client_samples(data_cfg, seed: int, client: int, class_names: Sequence[str],
                         main_target: str = "traffic_class") -> SampleSet:
    """A deployed base station's training samples from its own flows only (``data.root``).

    Every local flow is a training flow, except flows of ``data.exclude_classes``; labels index the
    federation's ``class_names``; windows and the label mask are drawn from the same random streams
    as in simulation, keyed by the base station's index.

    Raises:
        ConfigError: ``data.labeled_flows_per_class`` is set: it chooses labelled flows among the
            whole federation's, which no single base station sees.
    """
    if data_cfg.labeled_flows_per_class is not None:
        raise ConfigError(f"data.labeled_flows_per_class={data_cfg.labeled_flows_per_class} chooses labelled flows "
                          "among the whole federation's training flows, which a deployed base station does not see; "
                          "use data.labeled_fraction on deployed base stations")
    flows, _ = load_flows(data_cfg.root, data_cfg)
    _report_short_flows(flows, data_cfg.min_packets)
    flows = flows.with_class_list(class_names)
    targets = compute_targets({name: dict(spec) for name, spec in data_cfg.targets.items()}, flows)
    targets, excluded = _exclude(targets, main_target, data_cfg.exclude_classes)
    samples, _ = make_samples(flows, np.flatnonzero(~excluded), targets, data_cfg,
                              stream(seed, "windows_train", client), data_cfg.labeled_fraction, main_target)
    return samples


def _exclude(targets: dict[str, TargetValues], main_target: str, names: Sequence[str]
             ) -> tuple[dict[str, TargetValues], np.ndarray]:
    """``data.exclude_classes``: the main target without those classes, and ``(F,)`` which flows are of them."""
    main = targets[main_target]
    if not names:
        return targets, np.zeros(len(main.values), dtype=bool)
    kept = main.without_classes(list(names))
    return {**targets, main_target: kept}, kept.values == IGNORE_INDEX


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

    ``data_cfg`` is the ``data`` section of the experiment config (see ``fedaux.config``). The test
    flows are ``data.test_fraction`` of each class or, with ``data.folds >= 2``, fold
    ``data.fold``. Flows of ``data.exclude_classes`` are split like the others (so the other
    classes' test flows are those of the same run without the key), then all moved to the test
    set as unknown traffic. Main labels: ``data.labeled_fraction`` of each base station's windows,
    or every window of ``data.labeled_flows_per_class`` training flows per class (drawn from the
    seed's ``labels`` stream among flows long enough for a window).
    """
    flows, skipped = load_flows(data_cfg.root, data_cfg)
    _report_short_flows(flows, data_cfg.min_packets)
    targets = compute_targets({name: dict(spec) for name, spec in data_cfg.targets.items()}, flows)
    if main_target not in targets:
        raise ConfigError(f"main task target {main_target!r} is not in data.targets; defined: {sorted(targets)}")

    targets, excluded = _exclude(targets, main_target, data_cfg.exclude_classes)
    train_flows, test_flows = split_test_flows(flows.labels, data_cfg.test_fraction, stream(seed, "split"),
                                               groups=flows.group_index() if data_cfg.split_by == "group" else None,
                                               class_names=flows.class_names, folds=data_cfg.folds, fold=data_cfg.fold)
    if excluded.any():
        train_flows = train_flows[~excluded[train_flows]]
        test_flows = np.union1d(test_flows, np.flatnonzero(excluded)).astype(np.int64)
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

    labeled_flows = None
    if data_cfg.labeled_flows_per_class is not None:
        main = targets[main_target]
        long_enough = train_flows[flows.packet_counts()[train_flows] >= data_cfg.min_packets]
        labeled_flows = choose_labeled_flows(main.values, long_enough, data_cfg.labeled_flows_per_class,
                                             main.num_classes, stream(seed, "labels"), main.class_names)

    def samples(flow_ids: np.ndarray, rng: np.random.Generator, labeled_fraction: float | None,
                labeled: np.ndarray | None = None):
        return make_samples(flows, flow_ids, targets, data_cfg, rng, labeled_fraction, main_target, features, labeled)

    test, dropped = samples(test_flows, stream(seed, "windows_test"), labeled_fraction=None)
    clients = []
    all_dropped = list(dropped)
    for client, client_flows in enumerate(partition.client_flows):
        client_set, dropped = samples(client_flows, stream(seed, "windows_train", client), data_cfg.labeled_fraction,
                                      labeled_flows)
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
        excluded_classes=tuple(data_cfg.exclude_classes),
        unknown_test_flows=np.intersect1d(np.flatnonzero(excluded), test.flow_index.numpy()).astype(np.int64),
    )
