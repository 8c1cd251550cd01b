"""Which base stations take part in a round (``federated.fraction``), drawn the same way by every engine."""

from __future__ import annotations

from fedaux.federated.seeds import selection_rng


def clients_per_round(num_clients: int, fraction: float) -> int:
    """How many base stations take part in a round: ``max(1, round(fraction * B))``."""
    return max(1, int(round(fraction * num_clients)))


def select_clients(seed: int, rnd: int, num_clients: int, fraction: float) -> list[int]:
    """The base stations taking part in round ``rnd``: :func:`clients_per_round` of them, seeded.

    Example:
        >>> select_clients(0, 1, 4, 1.0)
        [0, 1, 2, 3]
        >>> len(select_clients(0, 1, 10, 0.3))
        3
    """
    count = clients_per_round(num_clients, fraction)
    if count >= num_clients:
        return list(range(num_clients))
    rng = selection_rng(seed, rnd)
    return sorted(int(c) for c in rng.choice(num_clients, size=count, replace=False))
