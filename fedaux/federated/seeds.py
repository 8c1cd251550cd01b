"""Every seed a federated run derives from ``cfg.seed``, in one place.

Each purpose has its own stream, so two purposes never draw the same numbers, and every engine
(sequential, worker processes, Flower) computes a seed by calling the same function: a base
station's fit in round 3 is seeded alike wherever it runs.

Example:
    >>> fit_seed(0, 1, 2) == fit_seed(0, 1, 2) != fit_seed(0, 1, 3)
    True
"""

from __future__ import annotations

import numpy as np

# Edge servers' noise streams sit far above any base station index, so an edge's noise seed can
# never equal a base station's fit seed of the same round.
EDGE_STREAM = 1_000_000
SELECTION_STREAM = 7  # the numpy stream that draws each round's base stations


def derived_seed(*parts: int) -> int:
    """A 32-bit seed from integer parts (experiment seed, round, ...): the same wherever it is computed."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def fit_seed(seed: int, rnd: int, client: int) -> int:
    """The seed of base station ``client``'s fit in round ``rnd``: its batches' shuffle, the random
    loss weights, dropout, DP-SGD and local-DP noise."""
    return derived_seed(seed, rnd, client)


def edge_noise_seed(seed: int, rnd: int, edge: int) -> int:
    """The seed of edge server ``edge``'s central-DP noise in round ``rnd``."""
    return derived_seed(seed, rnd, EDGE_STREAM + edge)


def selection_rng(seed: int, rnd: int) -> np.random.Generator:
    """The generator that draws round ``rnd``'s base stations."""
    return np.random.default_rng([seed, SELECTION_STREAM, rnd])
