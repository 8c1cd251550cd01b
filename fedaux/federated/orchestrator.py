"""The federated server protocol: select, send down, receive, aggregate per tier, evaluate, hook, keep state.

A small loop with hooks (in the spirit of Flower's Strategy): every measurement, file and logger
lives in a :class:`~fedaux.federated.hooks.RoundCallback`, never here. Where and when base
stations fit is an engine's job (:mod:`fedaux.federated.engines`); every engine drives this
class the same way, per round::

    clients = server.start_round(rnd)          # select, encode the downlink, on_round_start
    server.client_started(rnd, client)         # a fit is handed out (each selected base station)
    server.receive(rnd, update)                # edge stages, fold into its edge server's rule
    server.drop(rnd, client, reason)           # or: it failed
    record = server.finish_round(rnd)          # edge -> top stages, server update, evaluate, log

What an update goes through is the update pipeline (:mod:`fedaux.federated.pipeline`); the server
runs its edge and top slots.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedaux.data.samples import FederatedData
from fedaux.federated.aggregation import EdgeRule, TwoTierAggregator, cpu_state, state_nbytes
from fedaux.federated.client import GlobalEvaluator
from fedaux.federated.compression import Compression
from fedaux.federated.edge_fold import edge_receive
from fedaux.federated.errors import NotEnoughClients
from fedaux.federated.hooks import ClientUpdate, RoundAggregate, RoundCallback
from fedaux.federated.pipeline import LocalState, StageContext, Update, UpdateRejected
from fedaux.federated.privacy import ClientLevelDP
from fedaux.federated.runtime import ClientRuntime
from fedaux.federated.seeds import edge_noise_seed
from fedaux.federated.selection import clients_per_round, select_clients
from fedaux.unknown import FeatureSums

if TYPE_CHECKING:
    from fedaux.federated.engines.base import Engine

log = logging.getLogger(__name__)

TIER_EDGE = "base_station-edge"  # between base stations and their edge server
TIER_TOP = "edge-top"  # between edge servers and the top level


@dataclass(frozen=True)
class ServerSettings:
    """The server's side of the config: rounds, selection, aggregation, evaluation.

    Attributes:
        rounds: rounds in all (a resumed run continues to this many).
        fraction: the share of base stations selected each round.
        seed: the experiment seed (selection and edge noise derive from it).
        target_accuracy: the accuracy whose first round the summary reports.
        min_clients: fewer valid updates in a round stop the run.
        aggregation: the edge servers' rule (an ``AGGREGATION_RULES`` name).
        trim_fraction: its option (``trimmed_mean``).
        eval_batch_size: windows per batch when evaluating the global model.
    """

    rounds: int
    fraction: float = 1.0
    seed: int = 0
    target_accuracy: float = 0.8
    min_clients: int = 1
    aggregation: str = "fedavg"
    trim_fraction: float = 0.1
    eval_batch_size: int = 1024

    @classmethod
    def from_config(cls, cfg: Any) -> ServerSettings:
        fed = cfg.federated
        return cls(int(fed.rounds), float(fed.fraction), int(cfg.seed), float(cfg.target_accuracy), int(fed.min_clients),
                   str(fed.aggregation), float(fed.trim_fraction), int(fed.eval_batch_size))


class FederatedOrchestrator:
    """The server of a two-tier federation over the base stations of ``data``.

    Args:
        runtime: the base stations' runtime (model, strategy, update pipeline); the server reuses
            its model to evaluate, its strategy's downlink and its pipeline's edge and top stages.
        data: the clients' sample sets, their edge servers and the held-out test set.
        settings: rounds, selection, aggregation and evaluation.
        callbacks: round hooks. Their ``state_key`` values must differ where they keep state. (Those
            that are also Lightning callbacks run in the fits: :func:`fedaux.train.build_orchestrator`
            gives them to the runtime.)
        compression: the downlink codec (``federated.compression.downlink``).
        privacy: the client-level DP accountant (``privacy.mode`` central or local).
        engine: what :meth:`run` uses when no drive is given (the sequential engine by default).

    Its :meth:`state_dict` (completed rounds, global state, history, drop counts, the strategy's
    and the stages' server state, the privacy accountant, the base stations' and edge servers'
    local states and every callback's state) is all a resumed run needs besides the RNG states.
    """

    def __init__(self, runtime: ClientRuntime, data: FederatedData, settings: ServerSettings, *,
                 callbacks: Sequence[RoundCallback] = (), compression: Compression | None = None,
                 privacy: ClientLevelDP | None = None, engine: Engine | None = None) -> None:
        self.runtime, self.data, self.settings = runtime, data, settings
        self.callbacks = list(callbacks)
        _check_state_keys(self.callbacks)
        self.compression = compression or Compression()
        self.privacy = privacy
        if engine is None:
            from fedaux.federated.engines.sequential import SequentialEngine

            engine = SequentialEngine()
        self.engine = engine
        self.global_state = cpu_state(runtime.model)
        self.rejections: dict[int, int] = {}  # base station -> updates dropped or rejected so far
        self.client_states: dict[int, LocalState] = {}  # what each base station keeps (in-process engines)
        self.edge_states: dict[int, LocalState] = {}  # what each edge server's stages keep (uplink residuals)
        self.stop_reason: str | None = None  # set when the run ends early by design (privacy budget)
        self._payload: dict[str, Any] = {}  # what the base stations start from (decoded downlink)
        self._downlink_wire: dict[str, Any] = {}  # what is sent down (the payload, encoded)
        self.evaluator = GlobalEvaluator(runtime.model, data.test, settings.eval_batch_size, runtime.trainer_options)
        self.history: list[dict[str, Any]] = []
        self.completed_rounds = 0
        self.summary: dict[str, Any] | None = None
        self._received: list[ClientUpdate] = []
        self._dropped: list[tuple[int, str]] = []
        # The statistics pass after the last round (sum_features): the federation's feature sums.
        self.feature_sums: FeatureSums | None = None

    # ------------------------------------------------------------------ views
    @property
    def model(self) -> Any:
        return self.runtime.model

    @property
    def strategy(self) -> Any:
        return self.runtime.strategy

    @property
    def pipeline(self) -> Any:
        return self.runtime.pipeline

    @property
    def initial_state(self) -> dict[str, torch.Tensor]:
        """The model's seeded initial weights (personal heads start here)."""
        return self.runtime.initial_state

    @property
    def rounds(self) -> int:
        return self.settings.rounds

    @property
    def seed(self) -> int:
        return self.settings.seed

    @property
    def payload(self) -> dict[str, Any]:
        """What every selected base station starts from this round (set by :meth:`start_round`): the
        strategy's downlink, as the base stations decode it."""
        return self._payload

    @property
    def downlink_wire(self) -> dict[str, Any]:
        """The arrays actually sent down this round (the payload, encoded by the downlink codec)."""
        return self._downlink_wire

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run continues from, except RNG states (the checkpoint adds those)."""
        return {
            "completed_rounds": self.completed_rounds,
            "global_state": self.global_state,
            "history": list(self.history),
            "rejections": dict(self.rejections),
            "strategy": self.strategy.state_dict(),
            "stages": self.pipeline.state_dict(),
            "privacy": self.privacy.state_dict() if self.privacy is not None else {},
            "client_states": dict(self.client_states),
            "edge_states": dict(self.edge_states),
            "callbacks": {cb.state_key: state for cb in self.callbacks if (state := cb.state_dict())},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`; callbacks whose key it lacks keep their fresh state."""
        self.completed_rounds = int(state["completed_rounds"])
        self.global_state = {k: v.detach().to("cpu") for k, v in state["global_state"].items()}
        self.history = list(state["history"])
        self.rejections = {int(k): int(v) for k, v in state["rejections"].items()}
        self.strategy.load_state_dict(state.get("strategy", {}))
        self.pipeline.load_state_dict(state.get("stages", {}))
        if self.privacy is not None:
            self.privacy.load_state_dict(state.get("privacy", {}))
        self.client_states = {int(k): _cpu_local_state(v) for k, v in state.get("client_states", {}).items()}
        self.edge_states = {int(k): _cpu_local_state(v) for k, v in state.get("edge_states", {}).items()}
        saved = state["callbacks"]
        for callback in self.callbacks:
            if saved.get(callback.state_key):
                callback.load_state_dict(saved[callback.state_key])

    # ------------------------------------------------------------------ one round
    def start_round(self, rnd: int) -> list[int]:
        """Pick the round's base stations, open a fresh aggregator, encode the downlink and call
        ``on_round_start``."""
        s = self.settings
        clients = select_clients(s.seed, rnd, len(self.data.clients), s.fraction)
        self._aggregator = TwoTierAggregator(self.data.partition.edge_of_client, s.aggregation, s.trim_fraction)
        local = self.strategy.local_keys  # kept by each base station (federated.batchnorm=local): never sent
        downlink = {k: v for k, v in self.strategy.downlink(self.global_state).items() if k not in local}
        self._downlink_wire, self._payload = self.compression.send_down(downlink)
        self._received, self._dropped = [], []
        self._call("on_round_start", rnd, clients)
        return clients

    def client_started(self, rnd: int, client: int) -> None:
        """An engine hands out ``client``'s fit (``on_client_start``)."""
        self._call("on_client_start", rnd, client)

    def receive(self, rnd: int, update: ClientUpdate) -> None:
        """Take one base station's update: its edge server's stages (decode, validate, clip), the
        hooks, then fold it into the edge's rule and drop its state, so a round holds one state
        per edge server however many base stations there are."""
        try:
            accepted, kept, nbytes = edge_receive(self.pipeline, update, self._payload, self.seed, rnd,
                                                  self.edge_states.get(update.edge))
        except UpdateRejected as err:
            self.drop(rnd, update.client, f"update rejected: {err}")
            return
        self._keep_edge_state(update.edge, kept)
        update.state, update.nbytes = accepted.state, nbytes
        self._call("on_client_done", rnd, update)
        self._aggregator.add(update.client, update.state, update.num_samples)
        update.state = {}
        self._keep_received(update)

    def receive_folded(self, rnd: int, update: ClientUpdate) -> None:
        """Take one base station's update that went through its edge server's stages and was
        folded into that edge's sum where it was fitted (:mod:`fedaux.federated.edge_fold`):
        ``update.state`` is empty, ``update.nbytes`` says what it sent; the hooks run and its local
        state is kept as in :meth:`receive`. The edge's sum arrives with :meth:`add_edge_sum`."""
        self._call("on_client_done", rnd, update)
        self._keep_received(update)

    def _keep_received(self, update: ClientUpdate) -> None:
        if update.local_state is not None:  # in-process engines keep what each base station keeps
            self.client_states[update.client] = update.local_state
            update.local_state = None
        self._received.append(update)

    def add_edge_sum(self, edge: int, rule: EdgeRule, kept: LocalState | None) -> None:
        """An edge server's rule with its base stations' updates already folded in (in the order
        :meth:`receive` would have folded them), and what that edge's stages keep."""
        self._aggregator.add_edge(edge, rule)
        self._keep_edge_state(edge, kept or {})

    def edge_fold_blocker(self) -> str | None:
        """Why this run's edge servers cannot fold their base stations' updates where those were
        fitted (:mod:`fedaux.federated.edge_fold`), or None when they can: only a linear rule's sums
        fold (``fedavg``), and a round callback must not need each update's tensors."""
        if self.settings.aggregation != "fedavg":
            return (f"federated.aggregation={self.settings.aggregation} needs all of an edge server's updates at "
                    "once; only fedavg's sums fold")
        readers = [type(cb).__qualname__ for cb in self.callbacks if _reads_update_state(cb)]
        if readers:
            return (f"the round callbacks {readers} read each update's tensors in on_client_done (set "
                    "reads_update_state = False on a callback that does not)")
        return None

    def drop(self, rnd: int, client: int, reason: str) -> None:
        """Leave a base station out of this round, saying why (logged, counted, passed to the hooks)."""
        log.warning("round %d: base station %d dropped: %s", rnd, client, reason)
        self.rejections[client] = self.rejections.get(client, 0) + 1
        self._dropped.append((client, reason))
        self._call("on_client_dropped", rnd, client, reason)

    def _keep_edge_state(self, edge: int, kept: LocalState) -> None:
        if kept:
            self.edge_states[edge] = kept
        else:
            self.edge_states.pop(edge, None)

    def _aggregate(self, rnd: int) -> RoundAggregate:
        edge_up_nbytes: dict[int, int] = {}

        def edge_uplink(edge: int, state: dict[str, torch.Tensor], rule: Any) -> dict[str, torch.Tensor]:
            """An edge server's average through its send stages (noise, encode), then the top's decode."""
            share = rule.heaviest / rule.weight if hasattr(rule, "heaviest") and rule.weight > 0 else 1.0
            average = Update(state, self._payload, edge, rule.weight, edge_noise_seed(self.seed, rnd, edge))
            sent, kept = self.pipeline.edge_send(average, StageContext(rnd, weight_share=share), self.edge_states.get(edge))
            self._keep_edge_state(edge, kept)
            edge_up_nbytes[edge] = sent.nbytes = state_nbytes(sent.state)
            return self.pipeline.top_receive(sent, StageContext(rnd)).state

        result = self._aggregator.result(edge_uplink)
        updates = self._received
        average = Update(result.global_state, self.global_state, -1, float(sum(result.edge_samples.values())), 0)
        context = StageContext(rnd, participants=len(updates), clients=len(self.data.clients))
        new_global = self.pipeline.top_update(average, context).state
        # The strategy's payload (encoded) goes down to every participating edge server and base
        # station; each base station's upload goes up to its edge server, and each edge server's
        # average (noised, encoded) to the top.
        down_nbytes = state_nbytes(self._downlink_wire)
        down = {TIER_TOP: down_nbytes * len(result.edge_states), TIER_EDGE: down_nbytes * len(updates)}
        up = {TIER_EDGE: sum(u.nbytes for u in updates), TIER_TOP: sum(edge_up_nbytes.values())}
        return RoundAggregate(new_global, result.edge_samples, [u.client for u in updates], down, up)

    def finish_round(self, rnd: int) -> dict[str, Any]:
        """Aggregate, evaluate and log a round whose client updates were all received (any engine).

        Raises:
            NotEnoughClients: fewer than ``min_clients`` valid updates; the global state and the
                last checkpoint stay as they were after the previous round.
        """
        if len(self._received) < self.settings.min_clients:
            reasons = "; ".join(f"base station {c}: {r}" for c, r in self._dropped) or "none selected"
            raise NotEnoughClients(
                f"round {rnd}: {len(self._received)} valid update(s), federated.min_clients={self.settings.min_clients}; "
                f"stopping after round {self.completed_rounds} (its state is saved). Dropped: {reasons}"
            )
        aggregate = self._aggregate(rnd)
        updates = self._received
        self.global_state = aggregate.global_state
        self._call("on_aggregated", rnd, aggregate)
        metrics: dict[str, Any] = self.evaluator(self.global_state)  # floats, and clients/dropped_reasons (str)
        metrics.update(round_client_metrics(updates))
        if self.privacy is not None:
            metrics["privacy/epsilon"] = self.privacy.account(self.sample_rate)
        client_eps = [u.train_metrics["privacy/client_epsilon"] for u in updates if "privacy/client_epsilon" in u.train_metrics]
        if client_eps:  # DP-SGD: the guarantee is the worst base station's
            metrics["privacy/epsilon"] = max(client_eps)
        metrics["clients"] = len(updates)
        metrics["clients/dropped"] = len(self._dropped)
        if self._dropped:
            metrics["clients/dropped_reasons"] = "; ".join(f"{c}: {r}" for c, r in self._dropped)
        self._call("on_evaluated", rnd, metrics)
        record: dict[str, Any] = {"round": rnd, **metrics}
        self._call("log_round", rnd, record)
        self.history.append(record)
        self.completed_rounds = rnd
        self._call("on_round_end", rnd, record)
        return record

    # ------------------------------------------------------------------ after the last round
    def sum_features(self, gather: Callable[[dict[str, torch.Tensor]], Iterable[tuple[int, FeatureSums | str]]]) -> None:
        """The statistics pass, once, after the last round: ``gather(global_state)`` has every base
        station compute its :class:`~fedaux.unknown.FeatureSums` with the final global model (where,
        is the engine's business: :meth:`~fedaux.federated.runtime.ClientRuntime.feature_sums`) and
        yields ``(client, sums)``, or ``(client, reason)`` for one that failed (left out, logged).
        The server adds the exact sums up into :attr:`feature_sums` (None: no base station answered).

        Skipped under differential privacy (``privacy.mode`` other than none): exact per-class sums
        would escape the privacy accounting.
        """
        self.feature_sums = None
        if self.privacy is not None or self.runtime.options.dp_sgd is not None:
            log.info("no feature statistics: exact per-class feature sums are not covered by the privacy accounting")
            return
        total: FeatureSums | None = None
        for client, reply in gather(self.global_state):
            if isinstance(reply, str):
                log.warning("feature statistics: base station %d left out: %s", client, reply)
                continue
            total = reply if total is None else total + reply
        self.feature_sums = total

    # ------------------------------------------------------------------ the run
    def run(self, drive: Callable[[FederatedOrchestrator], None] | None = None) -> dict[str, Any]:
        """All rounds left; returns the summary. ``on_run_teardown`` hooks run even if a round raises.

        Args:
            drive: what calls the round API for each round (an engine's ``drive``). None: run
                with :attr:`engine`, which calls back with its own.
        """
        if drive is None:
            return self.engine.run(self)
        failed = True
        try:
            self._call("on_run_start")
            drive(self)
            if self.completed_rounds < self.rounds and self.stop_reason is None:
                raise RuntimeError(f"the run stopped after {self.completed_rounds} of {self.rounds} rounds")
            self.summary = summarize(self.history, self.model.main_task, self.settings.target_accuracy,
                                     self.strategy.headline_key(self.model.main_task))
            if self.privacy is not None:
                self.summary["privacy_epsilon"] = self.privacy.epsilon()
                self.summary["privacy_delta"] = self.privacy.delta
            if self.stop_reason is not None:
                self.summary["stopped_early"] = self.stop_reason
            self._call("add_to_summary", self.summary)
            self._call("on_run_end", self.summary)
            failed = False
            return self.summary
        finally:
            self._call("on_run_teardown", failed)

    @property
    def sample_rate(self) -> float:
        """The share of base stations selected each round (the privacy accountant's sampling rate)."""
        clients = len(self.data.clients)
        return clients_per_round(clients, self.settings.fraction) / clients

    def rounds_to_run(self) -> int:
        """The rounds still to run: all remaining ones, or fewer where the next would take epsilon
        above ``privacy.max_epsilon`` (then :attr:`stop_reason` says so and the run ends cleanly)."""
        remaining = self.rounds - self.completed_rounds
        if self.privacy is None or remaining <= 0:
            return max(remaining, 0)
        allowed = self.privacy.rounds_within_budget(self.sample_rate, remaining)
        if allowed < remaining:
            self.stop_reason = (
                f"privacy budget: round {self.completed_rounds + allowed + 1} would take epsilon to "
                f"{_epsilon_after(self.privacy, self.sample_rate, allowed):.3f} > privacy.max_epsilon="
                f"{self.privacy.max_epsilon:g} (delta {self.privacy.delta:g}); stopped after round "
                f"{self.completed_rounds + allowed}")
            log.warning(self.stop_reason)
        return allowed


def round_client_metrics(updates: Sequence[ClientUpdate]) -> dict[str, float]:
    """``train/global_loss`` (the sample-weighted mean of the base stations' training losses) and every
    other reported key averaged the same way over the base stations that reported it."""
    trained = [u for u in updates if math.isfinite(u.train_loss)]  # a client with no batch has no loss
    samples = sum(u.num_samples for u in trained)
    metrics = {"train/global_loss": sum(u.train_loss * u.num_samples for u in trained) / samples if samples else float("nan")}
    for key in sorted({k for u in trained for k in u.train_metrics} - {"train/loss"}):
        present = [u for u in trained if key in u.train_metrics]
        weight = sum(u.num_samples for u in present)
        metrics[key] = sum(u.train_metrics[key] * u.num_samples for u in present) / weight
    return metrics


def _reads_update_state(callback: RoundCallback) -> bool:
    """Whether ``callback`` has an ``on_client_done`` that may read ``update.state``."""
    overridden = type(callback).on_client_done is not RoundCallback.on_client_done
    return overridden and getattr(callback, "reads_update_state", True)


def _cpu_local_state(state: Mapping[str, Any]) -> LocalState:
    return {ns: {k: t.detach().to("cpu") for k, t in entries.items()} for ns, entries in state.items()}


def _epsilon_after(privacy: ClientLevelDP, sample_rate: float, rounds: int) -> float:
    trial = copy.deepcopy(privacy)
    for _ in range(rounds):
        trial.account(sample_rate)
    return trial.epsilon_after(sample_rate)


def summarize(history: Sequence[dict[str, Any]], main_task: str, target_accuracy: float,
              key: str | None = None) -> dict[str, Any]:
    """Final and best main accuracy and rounds to ``target_accuracy``; callbacks add their totals
    (MB, seconds, energy, ... and their values at the target) in ``add_to_summary``.

    Args:
        key: the record key of the main-task accuracy: ``val/acc/<main_task>`` (the global model on
            the held-out flows) unless a personalised strategy scores its base stations' own models.
    """
    if not history:
        return {"rounds": 0}
    key = key or f"val/acc/{main_task}"
    accs = [r[key] for r in history]
    best = int(np.argmax(accs))
    reached = next((r for r in history if r[key] >= target_accuracy), None)
    summary: dict[str, Any] = {
        "rounds": len(history),
        "final_accuracy": accs[-1],
        "best_accuracy": accs[best],
        "best_round": history[best]["round"],
        "final_f1": history[-1].get(f"val/f1/{main_task}"),
        "final_global_loss": history[-1].get("train/global_loss"),
        "target_accuracy": target_accuracy,
        "accuracy_key": key,
        "rounds_to_target": reached["round"] if reached else None,
    }
    return summary


def _check_state_keys(callbacks: Sequence[RoundCallback]) -> None:
    """Two stateful callbacks under one ``state_key`` would overwrite each other's checkpointed state."""
    seen: dict[str, RoundCallback] = {}
    for callback in callbacks:
        if type(callback).state_dict is RoundCallback.state_dict:
            continue  # keeps no state
        key = callback.state_key
        if key in seen:
            raise ValueError(
                f"callbacks {seen[key]!r} and {callback!r} share the state_key {key!r}; override state_key "
                "in one of them so their checkpointed states stay apart"
            )
        seen[key] = callback
