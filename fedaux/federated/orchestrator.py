"""The in-process federated loop: select, train locally, aggregate in two tiers, evaluate.

A small loop with hooks (in the spirit of Flower's Strategy): every measurement, file and logger
lives in a :class:`~fedaux.federated.hooks.RoundCallback`, never in the loop.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import numpy as np

from fedaux.data.samples import FederatedData
from fedaux.federated.aggregation import TwoTierAggregator, state_nbytes
from fedaux.federated.client import ClientFit, GlobalEvaluator, TrainerOptions, cpu_state, derived_seed
from fedaux.federated.compression import Compression
from fedaux.federated.errors import ClientTimeout, NotEnoughClients
from fedaux.federated.hooks import ClientUpdate, RoundAggregate, RoundCallback
from fedaux.federated.privacy import ClientLevelDP
from fedaux.federated.strategies import Strategy
from fedaux.federated.validation import update_problem
from fedaux.federated.workers import ClientWorkers, FitSettings
from fedaux.model.module import MultiTaskModule

log = logging.getLogger(__name__)

TIER_EDGE = "base_station-edge"  # between base stations and their edge server
TIER_TOP = "edge-top"  # between edge servers and the top level


def _with_timeout(fn: Callable[[], Any], timeout_s: float) -> Any:
    """Run ``fn`` in a daemon thread; raise :class:`ClientTimeout` if it has not returned in time."""
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as err:  # re-raised in the caller's thread
            outcome["error"] = err

    worker = threading.Thread(target=work, daemon=True, name="fedaux-client")
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise ClientTimeout(f"no answer within federated.client_timeout_s={timeout_s:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def clients_per_round(num_clients: int, fraction: float) -> int:
    """How many base stations take part in a round: ``max(1, round(fraction * B))``."""
    return max(1, int(round(fraction * num_clients)))


def select_clients(seed: int, rnd: int, num_clients: int, fraction: float) -> list[int]:
    """The base stations taking part in round ``rnd``: :func:`clients_per_round` of them, seeded."""
    count = clients_per_round(num_clients, fraction)
    if count >= num_clients:
        return list(range(num_clients))
    rng = np.random.default_rng([seed, 7, rnd])
    return sorted(int(c) for c in rng.choice(num_clients, size=count, replace=False))


class FederatedOrchestrator:
    """Runs ``rounds`` of a two-tier federated strategy (FedAvg by default) over the base stations of ``data``.

    Args:
        model: the multi-task LightningModule; its initial weights are the first global state.
            One model object is reused for every client's local fit (its state is reloaded first).
        data: clients' sample sets, their edge servers and the held-out test set.
        callbacks: round hooks; those that are also Lightning callbacks are attached to every
            client's Trainer. Their ``state_key`` values must differ where they keep state.
        trainer_options: accelerator, devices and precision of every client Trainer and the evaluator.
        strategy: what is sent, how clients train, what they keep and how the top tier updates
            (:mod:`fedaux.federated.strategies`); FedAvg when None.
        compression: the uplink and downlink codecs (:mod:`fedaux.federated.compression`).
        privacy: client-level differential privacy, central or local (:mod:`fedaux.federated.privacy`).
        dp_sgd: ``(clip_norm, noise_multiplier, delta)`` for sample-level DP-SGD in every local fit.
        workers: local fits run at once, each in its own process (:mod:`fedaux.federated.workers`)
            with ``worker_threads`` torch threads; 1 fits the base stations one after another in
            this process, with its torch threads. Updates are folded in base-station order either
            way, so with equal threads per fit the weights are equal bit for bit.

    Its :meth:`state_dict` (completed rounds, global state, history, drop counts, the strategy's
    server state, the privacy accountant, the base stations' local states, the edge servers'
    compression residuals and every callback's state) is all a resumed run needs besides the RNG
    states.
    """

    def __init__(
        self,
        model: MultiTaskModule,
        data: FederatedData,
        *,
        rounds: int,
        local_epochs: int = 1,
        batch_size: int = 32,
        fraction: float = 1.0,
        seed: int = 0,
        target_accuracy: float = 0.8,
        gradient_clip_val: float | None = None,
        eval_batch_size: int = 1024,
        callbacks: Sequence[RoundCallback] = (),
        client_timeout_s: float | None = None,
        min_clients: int = 1,
        update_norm_bound: float | None = None,
        aggregation: str = "fedavg",
        trim_fraction: float = 0.1,
        trainer_options: TrainerOptions | None = None,
        strategy: Strategy | None = None,
        compression: Compression | None = None,
        privacy: ClientLevelDP | None = None,
        dp_sgd: tuple[float, float, float] | None = None,
        workers: int = 1,
        worker_threads: int = 1,
    ) -> None:
        if workers < 1 or worker_threads < 1:
            raise ValueError(f"workers={workers} and worker_threads={worker_threads} must be at least 1")
        self.model, self.data = model, data
        self.rounds, self.local_epochs, self.batch_size = rounds, local_epochs, batch_size
        self.fraction, self.seed, self.gradient_clip_val = fraction, seed, gradient_clip_val
        self.target_accuracy = target_accuracy
        self.client_timeout_s, self.min_clients, self.update_norm_bound = client_timeout_s, min_clients, update_norm_bound
        self.aggregation, self.trim_fraction = aggregation, trim_fraction
        self.trainer_options = trainer_options or TrainerOptions()
        self.rejections: dict[int, int] = {}  # base station -> updates dropped or rejected so far
        self.callbacks = list(callbacks)
        _check_state_keys(self.callbacks)
        self.global_state = cpu_state(model)
        self.initial_state = cpu_state(model)  # seeded initial weights: personal heads start here
        self.strategy = strategy or Strategy([n for n, _ in model.named_parameters()])
        self.client_states: dict[int, dict[str, Any]] = {}  # what each base station keeps between rounds
        self.edge_residuals: dict[int, dict[str, Any]] = {}  # each edge server's uplink error feedback
        self.compression = compression or Compression()
        self.privacy = privacy
        self.dp_sgd = dp_sgd  # (clip_norm, noise_multiplier, delta) of sample-level DP-SGD, or None
        self.stop_reason: str | None = None  # set when the run ends early by design (privacy budget)
        self._payload: dict[str, Any] = {}  # what the base stations start from (decoded downlink)
        self._downlink_wire: dict[str, Any] = {}  # what is sent down (the payload, encoded)
        self.evaluator = GlobalEvaluator(model, data.test, eval_batch_size, self.trainer_options)
        self.history: list[dict[str, Any]] = []
        self.completed_rounds = 0
        self.summary: dict[str, Any] | None = None
        self.workers, self.worker_threads = workers, worker_threads
        self._pool: ClientWorkers | None = None  # started at the first parallel round, stopped by close()

    # ------------------------------------------------------------------ hooks
    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    @property
    def lightning_callbacks(self) -> list[L.Callback]:
        return [c for c in self.callbacks if isinstance(c, L.Callback)]

    @property
    def payload(self) -> dict[str, Any]:
        """What every selected base station starts from this round (set by :meth:`start_round`): the
        strategy's downlink, as the base stations decode it."""
        return self._payload

    @property
    def downlink_wire(self) -> dict[str, Any]:
        """The arrays actually sent down this round (the payload, encoded by the downlink codec)."""
        return self._downlink_wire

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run continues from, except RNG states (the checkpoint adds those).

        Keys: ``completed_rounds``, ``global_state``, ``history``, ``rejections`` (drops per base
        station) and ``callbacks`` (each stateful callback's ``state_dict()`` under its ``state_key``).
        """
        return {
            "completed_rounds": self.completed_rounds,
            "global_state": self.global_state,
            "history": list(self.history),
            "rejections": dict(self.rejections),
            "strategy": self.strategy.state_dict(),
            "privacy": self.privacy.state_dict() if self.privacy is not None else {},
            "client_states": dict(self.client_states),
            "edge_residuals": dict(self.edge_residuals),
            "callbacks": {cb.state_key: state for cb in self.callbacks if (state := cb.state_dict())},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`; callbacks whose key it lacks keep their fresh state."""
        self.completed_rounds = int(state["completed_rounds"])
        self.global_state = {k: v.detach().to("cpu") for k, v in state["global_state"].items()}
        self.history = list(state["history"])
        self.rejections = {int(k): int(v) for k, v in state["rejections"].items()}
        self.strategy.load_state_dict(state.get("strategy", {}))
        if self.privacy is not None:
            self.privacy.load_state_dict(state.get("privacy", {}))
        self.client_states = {int(k): {n: t.detach().to("cpu") for n, t in v.items()}
                              for k, v in state.get("client_states", {}).items()}
        self.edge_residuals = {int(k): {n: t.detach().to("cpu") for n, t in v.items()}
                               for k, v in state.get("edge_residuals", {}).items()}
        saved = state["callbacks"]
        for callback in self.callbacks:
            if saved.get(callback.state_key):
                callback.load_state_dict(saved[callback.state_key])

    # ------------------------------------------------------------------ one round
    def fit_client(self, client: int, rnd: int) -> ClientUpdate:
        """Train one base station in this process. With ``client_timeout_s`` the fit runs in a
        worker thread on its own copy of the model, so a client that hangs can be abandoned
        without touching shared state."""
        settings = self._fit_settings(self.model if self.client_timeout_s is None else copy.deepcopy(self.model))
        seed, local_state = derived_seed(self.seed, rnd, client), self.client_states.get(client)

        def fit():
            return settings.fit(client, self._payload, seed, local_state)

        self._call("on_client_start", rnd, client)
        result = fit() if self.client_timeout_s is None else _with_timeout(fit, self.client_timeout_s)
        return self._client_update(client, result)

    def _client_update(self, client: int, fit: ClientFit) -> ClientUpdate:
        edge = int(self.data.partition.edge_of_client[client])
        return ClientUpdate(client, edge, fit.upload, len(self.data.clients[client]), fit.metrics, fit.seconds,
                            local_state=fit.local_state, loop_seconds=fit.loop_seconds)

    def _fit_settings(self, model: MultiTaskModule | None = None) -> FitSettings:
        """What any base station's fit needs besides its payload, seed and local state: used here
        (on ``model``, by default the orchestrator's) and sent once to every worker process."""
        return FitSettings(
            model=self.model if model is None else model, clients=self.data.clients, local_epochs=self.local_epochs, batch_size=self.batch_size,
            gradient_clip_val=self.gradient_clip_val, callbacks=self.lightning_callbacks,
            trainer_options=self.trainer_options, strategy=self.strategy, initial_state=self.initial_state,
            test=self.data.test if self.strategy.personalised else None, compression=self.compression.uplink,
            privacy=self.privacy, dp_sgd=self.dp_sgd, threads=self.worker_threads,
        )

    def _fits_in_workers(self, rnd: int, clients: list[int]):
        """``(client, ClientUpdate | reason)`` in base-station order, fitted by the worker processes."""
        if self._pool is None:
            self._pool = ClientWorkers(self._fit_settings(), self.workers, self.client_timeout_s)
        seeds = {c: derived_seed(self.seed, rnd, c) for c in clients}
        states = {c: self.client_states.get(c) for c in clients}
        for client, outcome in self._pool.fit(clients, self._payload, seeds, states,
                                              on_dispatch=lambda c: self._call("on_client_start", rnd, c)):
            yield client, outcome if isinstance(outcome, str) else self._client_update(client, outcome)

    def _fits_here(self, rnd: int, clients: list[int]):
        """``(client, ClientUpdate | reason)`` in base-station order, fitted one after another here."""
        for client in clients:
            try:
                yield client, self.fit_client(client, rnd)
            except ClientTimeout as err:
                yield client, str(err)
            except Exception as err:  # a failing base station must not end the federation
                yield client, f"raised {type(err).__name__}: {err}"

    @property
    def worker_pids(self) -> list[int]:
        """The running worker processes' ids (none before the first parallel round or after :meth:`close`)."""
        return self._pool.pids if self._pool is not None else []

    def close(self) -> None:
        """Stop the worker processes, if any (:meth:`run` does it; a caller of :meth:`run_round` should)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def start_round(self, rnd: int) -> list[int]:
        """Pick the round's base stations, open a fresh aggregator and call ``on_round_start``."""
        clients = select_clients(self.seed, rnd, len(self.data.clients), self.fraction)
        self._aggregator = TwoTierAggregator(self.data.partition.edge_of_client, self.aggregation, self.trim_fraction)
        self._downlink_wire, self._payload = self.compression.send_down(self.strategy.downlink(self.global_state))
        self._received: list[ClientUpdate] = []
        self._dropped: list[tuple[int, str]] = []
        self._call("on_round_start", rnd, clients)
        return clients

    def receive(self, rnd: int, update: ClientUpdate) -> None:
        """Take one client's update: validate it, call the hooks, fold it into the aggregate and drop
        its state, so a round holds one state per edge server however many base stations there are."""
        nbytes = state_nbytes(update.state) if update.state else 0  # as sent: after compression
        if self.compression.uplink.active and update.state:
            try:
                update.state = self.compression.uplink.decode(update.state, self._payload)
            except (KeyError, RuntimeError, ValueError) as err:
                self.drop(rnd, update.client, f"update rejected: its compressed arrays do not decode ({err!r})")
                return
        problem = update_problem(update.state, self._payload, self.update_norm_bound)
        if problem is not None:
            self.drop(rnd, update.client, f"update rejected: {problem}")
            return
        if self.privacy is not None:
            update.state = self.privacy.clip_at_edge(update.state, self._payload)
        update.nbytes = nbytes
        self._call("on_client_done", rnd, update)
        self._aggregator.add(update.client, update.state, update.num_samples)
        update.state = {}
        if update.local_state is not None:  # the in-process engine keeps what each base station keeps
            self.client_states[update.client] = update.local_state
            update.local_state = None
        self._received.append(update)

    def drop(self, rnd: int, client: int, reason: str) -> None:
        """Leave a base station out of this round, saying why (logged, counted, passed to the hooks)."""
        log.warning("round %d: base station %d dropped: %s", rnd, client, reason)
        self.rejections[client] = self.rejections.get(client, 0) + 1
        self._dropped.append((client, reason))
        self._call("on_client_dropped", rnd, client, reason)

    def run_round(self, rnd: int) -> dict[str, Any]:
        """One in-process round: local fits (in worker processes when ``workers > 1``), then
        :meth:`finish_round`. A base station that raises, hangs or whose worker dies is dropped."""
        clients = self.start_round(rnd)
        fits = self._fits_in_workers(rnd, clients) if self.workers > 1 else self._fits_here(rnd, clients)
        for client, outcome in fits:
            if isinstance(outcome, str):
                self.drop(rnd, client, outcome)
            else:
                self.receive(rnd, outcome)
        return self.finish_round(rnd)

    def _aggregate(self, rnd: int) -> RoundAggregate:
        edge_up_nbytes: dict[int, int] = {}

        def edge_uplink(edge: int, state, rule):
            """What each edge server sends up: DP noise (central mode), then the uplink codec."""
            if self.privacy is not None:
                state = self.privacy.noise_at_edge(state, rule.heaviest / rule.weight,
                                                   derived_seed(self.seed, rnd, 1_000_000 + edge))
            if not self.compression.uplink.active:
                edge_up_nbytes[edge] = state_nbytes(state)
                return state
            residual = self.edge_residuals.get(edge, {})
            wire, kept = self.compression.uplink.encode(state, self._payload, residual)
            self.edge_residuals[edge] = kept
            edge_up_nbytes[edge] = state_nbytes(wire)
            return self.compression.uplink.decode(wire, self._payload)

        result = self._aggregator.result(edge_uplink)
        updates = self._received
        new_global = self.strategy.server_update(self.global_state, result.global_state, len(updates),
                                                 len(self.data.clients))
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
        if len(self._received) < self.min_clients:
            reasons = "; ".join(f"base station {c}: {r}" for c, r in self._dropped) or "none selected"
            raise NotEnoughClients(
                f"round {rnd}: {len(self._received)} valid update(s), federated.min_clients={self.min_clients}; "
                f"stopping after round {self.completed_rounds} (its state is saved). Dropped: {reasons}"
            )
        aggregate = self._aggregate(rnd)
        updates = self._received
        self.global_state = aggregate.global_state
        self._call("on_aggregated", rnd, aggregate)
        metrics = self.evaluator(self.global_state)
        trained = [u for u in updates if math.isfinite(u.train_loss)]  # a client with no batch has no loss
        samples = sum(u.num_samples for u in trained)
        metrics["train/global_loss"] = (
            sum(u.train_loss * u.num_samples for u in trained) / samples if samples else float("nan")
        )
        # The clients' per-task losses and loss weights, averaged over the round like the global loss.
        for key in sorted({k for u in trained for k in u.train_metrics} - {"train/loss"}):
            present = [u for u in trained if key in u.train_metrics]
            weight = sum(u.num_samples for u in present)
            metrics[key] = sum(u.train_metrics[key] * u.num_samples for u in present) / weight
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

    # ------------------------------------------------------------------ the run
    def run(self, drive: Callable[[FederatedOrchestrator], None] | None = None) -> dict[str, Any]:
        """All rounds; returns the summary. ``on_run_teardown`` hooks run even if a round raises.

        Args:
            drive: what calls :meth:`start_round`, :meth:`receive` and :meth:`finish_round` for each
                round; by default the in-process loop (:meth:`run_round`). The Flower engine passes
                its ServerApp, whose strategy calls the same methods.
        """
        failed = True
        try:
            self._call("on_run_start")
            (drive or FederatedOrchestrator._run_rounds)(self)
            if self.completed_rounds < self.rounds and self.stop_reason is None:
                raise RuntimeError(f"the run stopped after {self.completed_rounds} of {self.rounds} rounds")
            self.summary = summarize(self.history, self.model.main_task, self.target_accuracy,
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
            self.close()
            self._call("on_run_teardown", failed)

    def _run_rounds(self) -> None:
        for rnd in range(self.completed_rounds + 1, self.completed_rounds + self.rounds_to_run() + 1):
            self.run_round(rnd)

    @property
    def sample_rate(self) -> float:
        """The share of base stations selected each round (the privacy accountant's sampling rate)."""
        clients = len(self.data.clients)
        return clients_per_round(clients, self.fraction) / clients

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
