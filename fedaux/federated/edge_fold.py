"""An edge server's fold where its base stations were fitted: one batch per edge server.

With ``federated.fold_in_workers`` the worker-process engine hands each worker whole edge
servers: the base stations of one edge server in one message (:class:`EdgeBatch`), fitted one
after another, each update taken through the edge server's stages (decode, validate, clip) and
added to that edge's :class:`~fedaux.federated.aggregation.StreamingAverage` right there. What
comes back is one :class:`EdgeSum` per edge server: its running sums and, per base station, the
update's metadata (samples, bytes as sent, metrics, local state) without its tensors.

Why this is exact: the server's own fold adds an edge server's updates in base-station order,
one :meth:`~fedaux.federated.aggregation.StreamingAverage.add` each; here the same object does
the same additions in the same order, so the sums are the server's bit for bit (float64 sums
of float32 tensors are not associative, which is why an edge server is never split across
workers and partial sums are never added to each other). What it saves is one update's tensors
sent to the main process, unpickled, validated and folded there per base station: the main
process gets one sum per edge server.

What it gives up: the workers' load is balanced by whole edge servers, and a worker that dies or
runs past ``federated.client_timeout_s`` times the batch's base stations costs the whole batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from fedaux.data.samples import SampleSet
from fedaux.federated.aggregation import EdgeOfClient, StreamingAverage, state_nbytes
from fedaux.federated.hooks import ClientUpdate
from fedaux.federated.pipeline import LocalState, StageContext, Update, UpdatePipeline, UpdateRejected
from fedaux.federated.runtime import ClientRuntime, to_update
from fedaux.federated.seeds import fit_seed


@dataclass
class EdgeBatch:
    """What a worker gets to fit and fold one edge server's base stations of a round.

    Attributes:
        edge: the edge server.
        clients: its base stations selected this round, in the round's order (the fold's order).
        rnd: the round.
        seed: the experiment seed (each update's stage seed derives from it).
        local_states: what each base station kept from its last round (None: nothing yet).
        edge_state: what the edge server's stages keep between rounds (None: nothing yet).
    """

    edge: int
    clients: list[int]
    rnd: int
    seed: int
    local_states: dict[int, LocalState | None] = field(default_factory=dict)
    edge_state: LocalState | None = None


@dataclass
class EdgeSum:
    """An edge server's round, folded where its base stations were fitted.

    Attributes:
        edge: the edge server.
        rule: its sample-weighted sums (None: no update was accepted).
        edge_state: what its stages keep for the next round.
        outcomes: ``(client, update)`` with ``update.state`` empty (it is in ``rule``), or
            ``(client, reason)`` for a base station whose fit failed or whose update was rejected;
            in the batch's order.
    """

    edge: int
    rule: StreamingAverage | None
    edge_state: LocalState | None
    outcomes: list[tuple[int, ClientUpdate | str]]


def edge_receive(pipeline: UpdatePipeline, update: ClientUpdate, payload: Mapping[str, torch.Tensor], seed: int,
                 rnd: int, edge_state: LocalState | None) -> tuple[Update, LocalState, int]:
    """One base station's update through its edge server's stages (decode, validate, clip), on
    the server (:meth:`~fedaux.federated.orchestrator.FederatedOrchestrator.receive`) or in the
    worker that folds the edge (:func:`fit_and_fold`) alike: ``(accepted, what the edge's stages
    keep, bytes as sent)``.

    Raises:
        UpdateRejected: a stage refused it (the base station is dropped with the reason).
    """
    nbytes = state_nbytes(update.state) if update.state else 0  # as sent: after compression
    arrived = Update(update.state, payload, update.client, update.num_samples, fit_seed(seed, rnd, update.client), nbytes)
    accepted, kept = pipeline.edge_receive(arrived, StageContext(rnd), edge_state)
    return accepted, kept, nbytes


def fit_and_fold(runtime: ClientRuntime, clients: Sequence[SampleSet], payload: Mapping[str, torch.Tensor],
                 batch: EdgeBatch, edge_of_client: EdgeOfClient) -> EdgeSum:
    """Fit each base station of ``batch`` from ``payload`` and fold its update into the edge
    server's sums, as :meth:`~fedaux.federated.orchestrator.FederatedOrchestrator.receive` does on
    the server (same stages, same seeds, same order); a failing fit or a rejected update is that
    base station's reason and the others go on."""
    rule: StreamingAverage | None = None
    edge_state = batch.edge_state
    outcomes: list[tuple[int, ClientUpdate | str]] = []
    for client in batch.clients:
        try:
            fit = runtime.fit(client, clients[client], payload, batch.rnd, batch.local_states.get(client))
        except Exception as err:  # this base station's failure; the edge's others go on
            outcomes.append((client, f"raised {type(err).__name__}: {err}"))
            continue
        update = to_update(fit, edge_of_client)
        try:
            accepted, kept, nbytes = edge_receive(runtime.pipeline, update, payload, batch.seed, batch.rnd, edge_state)
        except UpdateRejected as err:
            outcomes.append((client, f"update rejected: {err}"))
            continue
        edge_state = kept or None
        rule = rule or StreamingAverage()
        rule.add(accepted.state, update.num_samples)
        update.state, update.nbytes = {}, nbytes
        outcomes.append((client, update))
    return EdgeSum(batch.edge, rule, edge_state, outcomes)
