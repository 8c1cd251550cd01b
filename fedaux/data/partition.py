"""Held-out test flows, partitions of training flows over base stations, and label scarcity.

The flow is the unit of every split: all subflows of a flow go to one place, so no flow can
inform both training and testing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
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


def split_test_flows(labels: np.ndarray, test_fraction: float, rng: np.random.Generator,
                     groups: np.ndarray | None = None,
                     class_names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of flow indices into ``(train, test)``, whole groups at a time.

    Each class gives about ``round(test_fraction * n_c)`` flows (at least one when
    ``test_fraction > 0`` and the class has two or more groups) to the test set. ``groups``
    ``(F,)`` names the capture each flow came from: a group goes wholly to one side, so no capture
    leaks from training into testing; a group belongs to the class of its first flow. Without
    groups every flow is its own group. ``class_names`` name the labels in messages.

    Raises:
        ConfigError: with ``test_fraction > 0``, a class whose several flows all come from one
            group would have no test flow; the message names the classes and the fix
            (``data.split_by=flow``). A class of a single flow trains only, with a warning.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"data.test_fraction={test_fraction} must be in [0, 1)")
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    _, first, group_of = np.unique(groups, return_index=True, return_inverse=True)
    # Each group's flows, in flow order, as a slice of one sorted index (no per-group scan).
    by_group = np.argsort(group_of, kind="stable")
    ends = np.cumsum(np.bincount(group_of, minlength=len(first)))
    starts = ends - np.bincount(group_of, minlength=len(first))
    in_flow_order = np.argsort(first, kind="stable")  # groups in order of their first flow
    def name(label: int) -> str:
        return repr(class_names[label]) if class_names is not None else str(label)

    train, test, one_group = [], [], []
    for label in np.unique(labels):
        class_groups = rng.permutation(in_flow_order[labels[first[in_flow_order]] == label])
        flows = [by_group[starts[g]:ends[g]] for g in class_groups]
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
                one_group.append(f"{name(int(label))} (all {len(flows[0])} flows from one capture)")
            else:
                log.warning("class %s has a single flow: it is used for training only, none is held out for "
                            "testing", name(int(label)))
        test.append(np.concatenate(flows[:k]) if k else np.zeros(0, np.int64))
        train.append(np.concatenate(flows[k:]))
    if one_group:
        raise ConfigError(
            f"data.split_by=group would leave class(es) {', '.join(one_group)} without test flows: a capture "
            f"stays whole on one side of the split (data.test_fraction={test_fraction}). Set data.split_by=flow "
            "to split their flows one by one, or add captures of these classes")
    return np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(test)).astype(np.int64)


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
    """The federation's shape (called by :func:`fedaux.config.validate`): every edge server needs a base station."""
    fed = cfg.federated
    if fed.edge_servers > fed.base_stations:
        raise ConfigError(f"federated.edge_servers={fed.edge_servers} exceeds federated.base_stations="
                          f"{fed.base_stations}; every edge server needs a base station")
