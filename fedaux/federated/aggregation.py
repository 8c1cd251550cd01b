"""Federated averaging of state dicts, by parameter name, in one or two tiers.

State is exchanged as ``dict[str, Tensor]`` (as Flower's ``ArrayRecord.from_torch_state_dict``),
never as a positional list. Floating-point tensors are averaged, weighted by sample count.
Integer tensors (counters such as BatchNorm's ``num_batches_tracked``) have no meaningful mean and
are taken from the client with the most samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

State = dict[str, torch.Tensor]


def state_nbytes(state: Mapping[str, torch.Tensor]) -> int:
    """Exact bytes of the tensors' data in a state dict (what goes over the wire, before framing)."""
    return sum(t.numel() * t.element_size() for t in state.values())


def weighted_average(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> State:
    """FedAvg of ``states`` weighted by ``weights`` (e.g. sample counts), tensor by tensor.

    Example:
        >>> a, b = {"w": torch.tensor([0.0, 2.0])}, {"w": torch.tensor([4.0, 6.0])}
        >>> weighted_average([a, b], [1, 3])["w"]
        tensor([3., 5.])
    """
    if not states:
        raise ValueError("cannot average zero states")
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    keys = list(states[0])
    for i, state in enumerate(states[1:], start=1):
        if list(state) != keys:
            raise ValueError(f"state {i} has keys {sorted(set(state) ^ set(keys))} that state 0 does not share")
    heaviest = max(range(len(states)), key=lambda i: weights[i])
    fractions = [w / total for w in weights]
    out: State = {}
    for key in keys:
        first = states[0][key]
        if first.is_floating_point():
            acc = torch.zeros_like(first, dtype=torch.float64)
            for state, fraction in zip(states, fractions):
                acc.add_(state[key].to(torch.float64), alpha=fraction)
            out[key] = acc.to(first.dtype)
        else:
            out[key] = states[heaviest][key].clone()
    return out


@dataclass(frozen=True)
class TwoTierResult:
    """The global state, each edge server's state and the samples behind each."""

    global_state: State
    edge_states: dict[int, State]
    edge_samples: dict[int, int]


def two_tier_fedavg(
    client_states: Mapping[int, Mapping[str, torch.Tensor]],
    client_samples: Mapping[int, int],
    edge_of_client: Mapping[int, int] | Sequence[int],
) -> TwoTierResult:
    """Each edge server averages its base stations; the top level averages the edge servers.

    Both tiers weight by samples, so the result equals one-tier FedAvg over all clients up to
    rounding; with one edge server it is exactly plain FedAvg. Edge servers whose base stations
    all sat out the round are absent from ``edge_states``.
    """
    by_edge: dict[int, list[int]] = {}
    for client in client_states:
        by_edge.setdefault(int(edge_of_client[client]), []).append(client)
    edge_states, edge_samples = {}, {}
    for edge, clients in sorted(by_edge.items()):
        edge_states[edge] = weighted_average([client_states[c] for c in clients], [client_samples[c] for c in clients])
        edge_samples[edge] = sum(client_samples[c] for c in clients)
    edges = sorted(edge_states)
    global_state = weighted_average([edge_states[e] for e in edges], [edge_samples[e] for e in edges])
    return TwoTierResult(global_state, edge_states, edge_samples)
