"""Federated averaging of state dicts, by parameter name, in one or two tiers.

State is exchanged as ``dict[str, Tensor]`` (as Flower's ``ArrayRecord.from_torch_state_dict``),
never as a positional list. Floating-point tensors are averaged, weighted by sample count.
Integer tensors (counters such as BatchNorm's ``num_batches_tracked``) have no meaningful mean and
are taken from the client with the most samples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from fedaux.errors import ConfigError
from fedaux.registry import Registry

State = dict[str, torch.Tensor]
# Each base station's edge server, by client index: a partition's ``(B,)`` integer array, or a list or mapping.
EdgeOfClient = Mapping[int, int] | Sequence[int] | np.ndarray


class EdgeRule(Protocol):
    """How an edge server combines its base stations' states: fed one state at a time."""

    weight: float  # the summed weights (samples) of the states added

    def add(self, state: Mapping[str, torch.Tensor], weight: float) -> None: ...

    def result(self) -> State: ...


# Rules by name (``federated.aggregation``). An entry is called with the round's options
# (``trim_fraction=...``) and returns a fresh :class:`EdgeRule`; it ignores options it does not use.
AGGREGATION_RULES: Registry[Callable[..., EdgeRule]] = Registry("aggregation rule", "federated.aggregation")


def cpu_state(module: torch.nn.Module) -> State:
    """A detached CPU copy of a module's state dict (safe to keep while the module trains on)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _plain_loading(module: torch.nn.Module) -> bool:
    """Whether loading ``module``'s state is one copy per tensor: no load hooks, and no
    ``_load_from_state_dict`` of its own beyond BatchNorm's and torchmetrics' (which only add
    entries missing from old checkpoints, or load metric states a state dict does not hold here)."""
    from torch.nn.modules.batchnorm import _NormBase
    from torchmetrics import Metric

    for sub in module.modules():
        if sub._load_state_dict_pre_hooks or sub._load_state_dict_post_hooks:
            return False
        own = type(sub)._load_from_state_dict
        if own is not torch.nn.Module._load_from_state_dict and not isinstance(sub, (_NormBase, Metric)):
            return False
    return True


def load_state(module: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """``module.load_state_dict(state)``, strict, as one in-place copy per tensor.

    Every base station's fit starts with a load, and ``load_state_dict`` walks the module tree
    with its checks and hooks: about 4 ms for this model against 0.7 ms for the copies on the
    2-core reference VM, paid per fit. The copies are what ``load_state_dict`` does for matching
    keys, shapes and dtypes; anything else (and a module with load hooks) goes through
    ``load_state_dict`` and its error messages.
    """
    targets = module.state_dict(keep_vars=True)
    if targets.keys() != state.keys() or not _plain_loading(module) or any(
            t.shape != state[k].shape or t.dtype != state[k].dtype or t.device != state[k].device
            for k, t in targets.items()):
        module.load_state_dict(state)
        return
    with torch.no_grad():
        for key, target in targets.items():
            target.copy_(state[key])


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
    average = StreamingAverage()
    for state, weight in zip(states, weights):
        average.add(state, weight)
    return average.result()


@dataclass(frozen=True)
class TwoTierResult:
    """The global state, each edge server's state and the samples behind each."""

    global_state: State
    edge_states: dict[int, State]
    edge_samples: dict[int, int]


@AGGREGATION_RULES.register("fedavg")
class StreamingAverage:
    """A sample-weighted average built one state at a time, holding only running sums (FedAvg).

    Sums are kept in float64 and divided once at the end, so the result does not depend on
    the order states arrive in beyond float64 rounding. Integer tensors keep the value of the
    heaviest state seen, as :func:`weighted_average` does.
    """

    def __init__(self, **_options: Any) -> None:
        self._sums: State = {}
        self._keep: State = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self._heaviest = -1.0
        self.weight = 0.0

    def add(self, state: Mapping[str, torch.Tensor], weight: float) -> None:
        if weight < 0:
            raise ValueError(f"weights must be non-negative, got {weight}")
        if self._dtypes and list(state) != list(self._dtypes):
            raise ValueError(f"state has keys {sorted(set(state) ^ set(self._dtypes))} that earlier states do not share")
        heavier = weight > self._heaviest
        for key, tensor in state.items():
            if not self._dtypes.get(key, tensor.dtype) == tensor.dtype:
                raise ValueError(f"{key}: dtype {tensor.dtype} differs from earlier states' {self._dtypes[key]}")
            self._dtypes[key] = tensor.dtype
            if tensor.is_floating_point():
                if key in self._sums and float(weight).is_integer():
                    # One fused op instead of a float64 copy, a product and a sum (half the time of
                    # a server's fold per update); the same value: a float32 entry times an integer
                    # weight is exact in float64, so it rounds only where the sum does.
                    self._sums[key].add_(tensor.detach(), alpha=weight)
                else:
                    contribution = tensor.detach().to(torch.float64) * weight
                    self._sums[key] = contribution if key not in self._sums else self._sums[key].add_(contribution)
            elif heavier:
                self._keep[key] = tensor.detach().clone()
        if heavier:
            self._heaviest = weight
        self.weight += weight

    @property
    def heaviest(self) -> float:
        """The largest single weight added (bounds one state's influence on the average)."""
        return self._heaviest

    def result(self) -> State:
        if not self._dtypes or self.weight <= 0:
            raise ValueError("cannot average zero states (or states of total weight zero)")
        return {
            key: (self._sums[key] / self.weight).to(dtype) if key in self._sums else self._keep[key].clone()
            for key, dtype in self._dtypes.items()
        }


def coordinate_median(states: Sequence[Mapping[str, torch.Tensor]]) -> State:
    """Coordinate-wise median of float tensors (Yin et al. 2018); integers from the first state."""
    return {key: torch.stack([s[key] for s in states]).median(dim=0).values if first.is_floating_point()
            else first.clone() for key, first in states[0].items()}


def trimmed_mean(states: Sequence[Mapping[str, torch.Tensor]], trim_fraction: float) -> State:
    """Coordinate-wise mean after dropping the ``trim_fraction`` largest and smallest values."""
    if not 0 <= trim_fraction < 0.5:
        raise ConfigError(f"federated.trim_fraction={trim_fraction} must be in [0, 0.5)")
    k = int(trim_fraction * len(states))
    out: State = {}
    for key, first in states[0].items():
        if not first.is_floating_point():
            out[key] = first.clone()
            continue
        stacked = torch.stack([s[key] for s in states]).sort(dim=0).values
        out[key] = stacked[k:len(states) - k].mean(dim=0)
    return out


class KeepsStates:
    """Base for robust rules, which need all of an edge server's states at once: it keeps them."""

    def __init__(self, **_options: Any) -> None:
        self.states: list[Mapping[str, torch.Tensor]] = []
        self.weight = 0.0

    def add(self, state: Mapping[str, torch.Tensor], weight: float) -> None:
        self.states.append(state)
        self.weight += weight

    def result(self) -> State:
        raise NotImplementedError


@AGGREGATION_RULES.register("median")
class CoordinateMedian(KeepsStates):
    """Coordinate-wise median of the edge server's states (Yin et al. 2018)."""

    def result(self) -> State:
        return coordinate_median(self.states)


@AGGREGATION_RULES.register("trimmed_mean")
class TrimmedMean(KeepsStates):
    """Coordinate-wise mean after dropping the ``trim_fraction`` largest and smallest values."""

    def __init__(self, trim_fraction: float = 0.1, **options: Any) -> None:
        super().__init__(**options)
        if not 0 <= trim_fraction < 0.5:
            raise ConfigError(f"federated.trim_fraction={trim_fraction} must be in [0, 0.5)")
        self.trim_fraction = trim_fraction

    def result(self) -> State:
        return trimmed_mean(self.states, self.trim_fraction)


class TwoTierAggregator:
    """Two-tier aggregation fed one client state at a time.

    ``rule`` names an entry of :data:`AGGREGATION_RULES`, applied at the edge tier, where a
    faulty base station's update arrives. With ``fedavg`` each edge server keeps a
    :class:`StreamingAverage` of its base stations, so memory grows with edge servers, not
    clients; the robust rules (``median``, ``trimmed_mean``) keep that edge's states until the
    round ends. The top level always averages the edge servers weighted by their samples.
    """

    def __init__(self, edge_of_client: EdgeOfClient, rule: str = "fedavg",
                 trim_fraction: float = 0.1) -> None:
        self._make_rule = AGGREGATION_RULES.get(rule)
        self._options = {"trim_fraction": trim_fraction}
        self._make_rule(**self._options)  # fail on bad options now, not when the first update arrives
        self.edge_of_client = edge_of_client
        self.rule = rule
        self._edges: dict[int, EdgeRule] = {}

    def add(self, client: int, state: Mapping[str, torch.Tensor], num_samples: int) -> None:
        edge = int(self.edge_of_client[client])
        if edge not in self._edges:
            self._edges[edge] = self._make_rule(**self._options)
        self._edges[edge].add(state, num_samples)

    def add_edge(self, edge: int, rule: EdgeRule) -> None:
        """An edge server's rule with its base stations already added (folded where they were
        fitted: :mod:`fedaux.federated.edge_fold`); the edge must have received nothing here."""
        if int(edge) in self._edges:
            raise ValueError(f"edge server {edge} already holds updates this round; its sum cannot be replaced")
        self._edges[int(edge)] = rule

    def result(self, edge_transform: Callable[[int, State, EdgeRule], State] | None = None) -> TwoTierResult:
        """The edge servers' states and their sample-weighted average.

        Args:
            edge_transform: applied to each edge server's state before it goes up, with the edge
                and its rule (central differential privacy adds its noise here).
        """
        if not self._edges:
            raise ValueError("no client state was received this round")
        edge_states = {edge: avg.result() for edge, avg in sorted(self._edges.items())}
        if edge_transform is not None:
            edge_states = {edge: edge_transform(edge, state, self._edges[edge]) for edge, state in edge_states.items()}
        edge_samples = {edge: int(avg.weight) for edge, avg in sorted(self._edges.items())}
        top = StreamingAverage()
        for edge, state in edge_states.items():
            top.add(state, edge_samples[edge])
        return TwoTierResult(top.result(), edge_states, edge_samples)


def two_tier_fedavg(
    client_states: Mapping[int, Mapping[str, torch.Tensor]],
    client_samples: Mapping[int, int],
    edge_of_client: EdgeOfClient,
) -> TwoTierResult:
    """Each edge server averages its base stations; the top level averages the edge servers.

    Both tiers weight by samples, so the result equals one-tier FedAvg over all clients up to
    rounding; with one edge server it is exactly plain FedAvg. Edge servers whose base stations
    all sat out the round are absent from ``edge_states``.
    """
    aggregator = TwoTierAggregator(edge_of_client)
    for client, state in client_states.items():
        aggregator.add(client, state, client_samples[client])
    return aggregator.result()
