"""Held-out test flows, partitions of training flows over base stations, and label scarcity.

The flow is the unit of every split: all subflows of a flow go to one place, so no flow can
inform both training and testing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedaux.errors import ConfigError
from fedaux.labels import IGNORE_INDEX
from fedaux.registry import Registry

log = logging.getLogger(__name__)

# A scheme deals training flows ``(n,)`` with their labels ``(n,)`` to ``clients`` buckets; it reads
# the options it needs (``alpha``, ``shards_per_client``) from keyword arguments and ignores the rest.
PartitionScheme = Callable[..., list[np.ndarray]]
PARTITION_SCHEMES: Registry[PartitionScheme] = Registry("partition scheme", "data.partition.scheme")


def _class_groups(labels: np.ndarray, rng: np.random.Generator, groups: np.ndarray | None
                  ) -> Iterator[tuple[int, list[np.ndarray]]]:
    """Per class (in label order): its groups' flow indices, the groups in a random order.

    ``groups`` ``(F,)`` names the capture each flow came from (None: every flow is its own group);
    a group belongs to the class of its first flow. One ``rng.permutation`` per class, in label
    order: the draws every split of the flows makes.
    """
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    _, first, group_of = np.unique(groups, return_index=True, return_inverse=True)
    # Each group's flows, in flow order, as a slice of one sorted index (no per-group scan).
    by_group = np.argsort(group_of, kind="stable")
    ends = np.cumsum(np.bincount(group_of, minlength=len(first)))
    starts = ends - np.bincount(group_of, minlength=len(first))
    in_flow_order = np.argsort(first, kind="stable")  # groups in order of their first flow
    for label in np.unique(labels):
        class_groups = rng.permutation(in_flow_order[labels[first[in_flow_order]] == label])
        yield int(label), [by_group[starts[g]:ends[g]] for g in class_groups]


def _namer(class_names: Sequence[str] | None) -> Callable[[int], str]:
    return lambda label: repr(class_names[label]) if class_names is not None else str(label)


def split_test_flows(labels: np.ndarray, test_fraction: float, rng: np.random.Generator,
                     groups: np.ndarray | None = None,
                     class_names: Sequence[str] | None = None,
                     folds: int = 0, fold: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of flow indices into ``(train, test)``, whole groups at a time.

    Each class gives about ``round(test_fraction * n_c)`` flows (at least one when
    ``test_fraction > 0`` and the class has two or more groups) to the test set. ``groups``
    ``(F,)`` names the capture each flow came from: a group goes wholly to one side, so no capture
    leaks from training into testing; a group belongs to the class of its first flow. Without
    groups every flow is its own group. ``class_names`` name the labels in messages.

    With ``folds >= 2`` the test set is instead fold ``fold`` of :func:`assign_folds` (same
    ``rng`` stream, so the ``folds`` splits of one seed test every flow exactly once) and
    ``test_fraction`` is not used.

    Raises:
        ConfigError: with ``test_fraction > 0``, a class whose several flows all come from one
            group would have no test flow; the message names the classes and the fix
            (``data.split_by=flow``). A class of a single flow trains only, with a warning.
    """
    if folds >= 2:
        if not 0 <= fold < folds:
            raise ConfigError(f"data.fold={fold} must be in [0, {folds - 1}] (data.folds={folds})")
        fold_of = assign_folds(labels, folds, rng, groups, class_names)
        return np.flatnonzero(fold_of != fold).astype(np.int64), np.flatnonzero(fold_of == fold).astype(np.int64)
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"data.test_fraction={test_fraction} must be in [0, 1)")
    name = _namer(class_names)
    train, test, one_group = [], [], []
    for label, flows in _class_groups(labels, rng, groups):
        sizes = np.array([len(f) for f in flows])
        n_test = int(round(test_fraction * sizes.sum()))
        if test_fraction > 0 and len(flows) > 1:
            n_test = max(n_test, 1)
        # The number of whole groups whose flows come closest to the test share, at least one
        # when a share is due, always leaving one group for training.
        k = int(np.argmin(np.abs(np.cumsum(sizes) - n_test))) + 1 if n_test > 0 else 0
        k = min(k, len(flows) - 1) if len(flows) > 1 else 0
        if test_fraction > 0 and len(flows) == 1:
            if len(flows[0]) > 1:
                one_group.append(f"{name(label)} (all {len(flows[0])} flows from one capture)")
            else:
                log.warning("class %s has a single flow: it is used for training only, none is held out for "
                            "testing", name(label))
        test.append(np.concatenate(flows[:k]) if k else np.zeros(0, np.int64))
        train.append(np.concatenate(flows[k:]))
    if one_group:
        raise ConfigError(
            f"data.split_by=group would leave class(es) {', '.join(one_group)} without test flows: a capture "
            f"stays whole on one side of the split (data.test_fraction={test_fraction}). Set data.split_by=flow "
            "to split their flows one by one, or add captures of these classes")
    return np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(test)).astype(np.int64)


def assign_folds(labels: np.ndarray, folds: int, rng: np.random.Generator, groups: np.ndarray | None = None,
                 class_names: Sequence[str] | None = None) -> np.ndarray:
    """``(F,)`` the cross-validation fold (``0..folds-1``) of every flow, whole groups at a time.

    Per class, its groups (in a random order, largest first) go one by one to the fold holding the
    fewest of the class's flows so far, ties to the fold with the fewest flows of any class, then
    the lowest index: each class is spread over the folds as evenly as its groups allow, and the
    folds come out of nearly equal size. Fold ``i`` is the test set of split ``i``, so across the
    ``folds`` splits every flow is tested exactly once and no group straddles training and testing.
    A class of a single flow is in no fold (``-1``: it trains in every split), with a warning.

    Example:
        >>> labels = np.repeat([0, 1], 5)
        >>> fold_of = assign_folds(labels, 5, np.random.default_rng(0))
        >>> [sorted(labels[fold_of == f].tolist()) for f in range(5)]
        [[0, 1], [0, 1], [0, 1], [0, 1], [0, 1]]

    Raises:
        ConfigError: a class whose several flows all come from one group (it could never train
            and be tested in one split: ``data.split_by=flow`` is the fix), or fewer groups than
            folds (a fold would test nothing).
    """
    if folds < 2:
        raise ConfigError(f"data.folds={folds}: cross-validation needs 2 or more folds")
    name = _namer(class_names)
    fold_of = np.full(len(labels), -1, dtype=np.int64)
    totals = np.zeros(folds, dtype=np.int64)
    one_group, thin = [], []
    for label, flows in _class_groups(labels, rng, groups):
        if len(flows) == 1:
            if len(flows[0]) > 1:
                one_group.append(f"{name(label)} (all {len(flows[0])} flows from one capture)")
            else:
                log.warning("class %s has a single flow: it is used for training only, in no fold", name(label))
            continue
        if len(flows) < folds:
            thin.append(f"{name(label)} ({len(flows)} groups)")
        in_class = np.zeros(folds, dtype=np.int64)
        for members in sorted(flows, key=len, reverse=True):  # stable: equal sizes keep the random order
            target = min(range(folds), key=lambda f: (in_class[f], totals[f], f))
            fold_of[members] = target
            in_class[target] += len(members)
            totals[target] += len(members)
    if one_group:
        raise ConfigError(
            f"data.split_by=group with data.folds={folds}: class(es) {', '.join(one_group)} would be tested in one "
            "fold with no flow of theirs left to train on (a capture stays whole in one fold). Set "
            "data.split_by=flow to deal their flows one by one, or add captures of these classes")
    if (totals == 0).any():
        raise ConfigError(f"data.folds={folds}: only {int((totals > 0).sum())} fold(s) get a flow (there are fewer "
                          f"flow groups than folds); choose data.folds <= {int((totals > 0).sum())}")
    if thin:
        log.warning("data.folds=%d: class(es) %s have fewer groups than folds; some folds test none of their flows",
                    folds, ", ".join(thin))
    return fold_of


def choose_labeled_flows(flow_labels: np.ndarray, candidates: np.ndarray, per_class: int, num_classes: int,
                         rng: np.random.Generator, class_names: Sequence[str] | None = None) -> np.ndarray:
    """Exactly ``per_class`` flows of each class ``0..num_classes-1`` drawn from ``candidates``
    (training flows that give windows), whose windows keep their main-task label; sorted indices.

    ``flow_labels`` ``(F,)`` is every flow's main-task class (negative: a class left out of
    training, never chosen). One ``rng.choice`` per class, in class order.

    Raises:
        ConfigError: a class with fewer candidate flows than ``per_class``, named with its count.
    """
    if per_class < 1:
        raise ConfigError(f"data.labeled_flows_per_class={per_class} must be >= 1")
    candidates = np.asarray(candidates, dtype=np.int64)
    name = _namer(class_names)
    chosen, short, fewest = [], [], per_class
    for label in range(num_classes):
        members = candidates[flow_labels[candidates] == label]
        if len(members) < per_class:
            short.append(f"class {name(label)} has {len(members)} training flow(s)")
            fewest = min(fewest, len(members))
            continue
        chosen.append(rng.choice(members, size=per_class, replace=False))
    if short:
        raise ConfigError(f"data.labeled_flows_per_class={per_class}, but {'; '.join(short)} long enough for a window "
                          f"(data.min_packets); lower data.labeled_flows_per_class to {fewest} or fewer, or use "
                          "data.labeled_fraction")
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.zeros(0, np.int64)


@dataclass(frozen=True)
class Partition:
    """Training flows dealt to base stations, and base stations grouped under edge servers.

    Attributes:
        client_flows: one ``(k_i,)`` int64 array of flow indices per base station.
        edge_of_client: ``(B,)`` index of the edge server each base station reports to.
    """

    client_flows: tuple[np.ndarray, ...]
    edge_of_client: np.ndarray

    @property
    def num_clients(self) -> int:
        return len(self.client_flows)


def partition_flows(
    flows: np.ndarray,
    labels: np.ndarray,
    base_stations: int,
    edge_servers: int,
    scheme: str,
    rng: np.random.Generator,
    alpha: float = 0.5,
    shards_per_client: int = 2,
) -> Partition:
    """Deal training ``flows`` (indices, with their class ``labels[flows]``) to base stations.

    ``scheme`` names an entry of :data:`PARTITION_SCHEMES` (``iid``, ``dirichlet``, ``shards``, or
    one a plug-in registered).

    Every base station gets at least one flow; base stations are grouped into ``edge_servers``
    contiguous blocks of (nearly) equal size.
    """
    deal = PARTITION_SCHEMES.get(scheme)
    if base_stations < 1 or not 1 <= edge_servers <= base_stations:
        raise ConfigError(
            f"federated.base_stations={base_stations} and federated.edge_servers={edge_servers}: "
            "need at least one base station and 1 <= edge_servers <= base_stations"
        )
    if len(flows) < base_stations:
        raise ConfigError(
            f"only {len(flows)} training flows for federated.base_stations={base_stations}; "
            "each base station needs at least one flow"
        )
    flows = np.asarray(flows, dtype=np.int64)
    buckets = deal(flows, labels[flows], base_stations, rng, alpha=alpha, shards_per_client=shards_per_client)
    edge_of_client = (np.arange(base_stations) * edge_servers) // base_stations
    return Partition(tuple(np.sort(b) for b in buckets), edge_of_client.astype(np.int64))


@PARTITION_SCHEMES.register("iid")
def iid(flows: np.ndarray, flow_labels: np.ndarray, clients: int, rng: np.random.Generator, **_) -> list[np.ndarray]:
    """Shuffle and deal round-robin."""
    order = rng.permutation(flows)
    return [order[i::clients] for i in range(clients)]


@PARTITION_SCHEMES.register("dirichlet")
def dirichlet(flows: np.ndarray, flow_labels: np.ndarray, clients: int, rng: np.random.Generator,
              alpha: float = 0.5, **_) -> list[np.ndarray]:
    """Per class, client proportions from Dirichlet(``alpha``); small alpha: each client sees few classes."""
    if alpha <= 0:
        raise ConfigError(f"data.partition.alpha={alpha} must be > 0")
    buckets: list[list[int]] = [[] for _ in range(clients)]
    for label in np.unique(flow_labels):
        members = rng.permutation(flows[flow_labels == label])
        proportions = rng.dirichlet(np.full(clients, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(members)).round().astype(int)
        for client, part in enumerate(np.split(members, cuts)):
            buckets[client].extend(part.tolist())
    # A client the draw left empty takes one flow from the largest client, so every base station
    # trains; with few flows per class and small alpha this happens regularly.
    for client in range(clients):
        if not buckets[client]:
            donor = max(range(clients), key=lambda c: len(buckets[c]))
            buckets[client].append(buckets[donor].pop(int(rng.integers(len(buckets[donor])))))
    return [np.asarray(b, dtype=np.int64) for b in buckets]


@PARTITION_SCHEMES.register("shards")
def shards(flows: np.ndarray, flow_labels: np.ndarray, clients: int, rng: np.random.Generator,
           shards_per_client: int = 2, **_) -> list[np.ndarray]:
    """Sort by class, cut ``clients * shards_per_client`` shards, deal ``shards_per_client`` to each
    client (McMahan et al. 2017)."""
    if shards_per_client < 1 or clients * shards_per_client > len(flows):
        raise ConfigError(
            f"data.partition.shards_per_client={shards_per_client}: need 1 <= base_stations * shards_per_client "
            f"<= {len(flows)} training flows"
        )
    order = flows[np.argsort(flow_labels, kind="stable")]
    pieces = np.array_split(order, clients * shards_per_client)
    dealt = rng.permutation(len(pieces))
    return [np.concatenate([pieces[s] for s in dealt[i::clients]]) for i in range(clients)]


def mask_labels(labels: np.ndarray, labeled_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Keep the main-task label on ``labeled_fraction`` of samples, ``IGNORE_INDEX`` elsewhere.

    ``round(labeled_fraction * N)`` samples keep their label, at least one when the fraction is
    above zero, so a client with any labels can always compute a main loss.
    """
    if not 0.0 <= labeled_fraction <= 1.0:
        raise ConfigError(f"data.labeled_fraction={labeled_fraction} must be in [0, 1]")
    masked = np.full_like(labels, IGNORE_INDEX)
    n_keep = int(round(labeled_fraction * len(labels)))
    if labeled_fraction > 0 and len(labels):
        n_keep = max(n_keep, 1)
    keep = rng.choice(len(labels), size=n_keep, replace=False)
    masked[keep] = labels[keep]
    return masked


def check_config(cfg: Any) -> None:
    """The federation's shape and the split's keys (called by :func:`fedaux.config.validate`): every
    edge server needs a base station; ``data.folds``/``data.fold`` in range; main labels by exactly
    one of ``data.labeled_fraction`` and ``data.labeled_flows_per_class``."""
    fed = cfg.federated
    if fed.edge_servers > fed.base_stations:
        raise ConfigError(f"federated.edge_servers={fed.edge_servers} exceeds federated.base_stations="
                          f"{fed.base_stations}; every edge server needs a base station")
    data = cfg.data
    if data.folds < 0:
        raise ConfigError(f"data.folds={data.folds} must be 0 or 1 (one test split, data.test_fraction) or >= 2 "
                          "(k-fold cross-validation)")
    if data.folds >= 2 and not 0 <= data.fold < data.folds:
        raise ConfigError(f"data.fold={data.fold} must be in [0, {data.folds - 1}] (data.folds={data.folds})")
    if data.folds < 2 and data.fold != 0:
        raise ConfigError(f"data.fold={data.fold} needs data.folds >= 2 (k-fold cross-validation); with "
                          f"data.folds={data.folds} the only valid value is 0")
    per_class, fraction = data.labeled_flows_per_class, data.labeled_fraction
    if per_class is not None and per_class < 1:
        raise ConfigError(f"data.labeled_flows_per_class={per_class} must be >= 1 (or null: data.labeled_fraction)")
    if per_class is not None and fraction is not None:
        raise ConfigError(f"data.labeled_fraction={fraction} and data.labeled_flows_per_class={per_class} are both "
                          f"set; keep one: data.labeled_fraction=null to label every window of {per_class} training "
                          f"flows per class, or data.labeled_flows_per_class=null to label {fraction:.0%} of each "
                          "base station's windows")
    if per_class is None and fraction is None:
        raise ConfigError("data.labeled_fraction is null and data.labeled_flows_per_class is not set; set one "
                          "(data.labeled_fraction=1.0 labels every window)")
    if len(set(data.exclude_classes)) != len(data.exclude_classes):
        raise ConfigError(f"data.exclude_classes={list(data.exclude_classes)} names a class twice")
