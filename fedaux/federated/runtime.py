"""One client runtime: everything a base station needs for a local fit, built once from the config.

:class:`ClientRuntime` holds the model, the strategy, the base station's update stages, the
Lightning callbacks of every fit and the fit settings. Every engine uses it the same way: the
sequential engine calls :meth:`ClientRuntime.fit` here, each worker process holds a copy, and
each Flower node builds one from the config its messages carry
(:meth:`ClientRuntime.from_config`). :func:`to_update` turns a finished fit into the
:class:`~fedaux.federated.hooks.ClientUpdate` the server receives, for every engine.

A base station's local state is namespaced by owner (:data:`~fedaux.federated.pipeline.LocalState`):
``strategy`` (personal heads, control variates), ``weighting`` (e.g. DWA's loss history),
``dpsgd`` (the DP-SGD accountant), ``batchnorm`` (its own BatchNorm statistics under
``federated.batchnorm=local``) and one namespace per update stage that keeps state
(``uplink``: error-feedback residuals).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch

from fedaux.data.datamodule import ClientDataModule
from fedaux.data.samples import SampleSet
from fedaux.federated.aggregation import EdgeOfClient, cpu_state, load_state
from fedaux.federated.client import TrainerOptions, client_trainer, personal_scores, quiet_lightning
from fedaux.federated.fit_loop import DirectFitLoop, direct_fit_blocker
from fedaux.federated.hooks import ClientUpdate
from fedaux.federated.phases import PRETRAIN, round_phase
from fedaux.federated.pipeline import (
    STRATEGY_STATE,
    LocalState,
    StageContext,
    State,
    Update,
    UpdatePipeline,
    build_pipeline,
)
from fedaux.federated.privacy import DPSGD, dp_sgd_settings
from fedaux.federated.seeds import fit_seed
from fedaux.federated.strategies import Strategy, build_strategy
from fedaux.model import build_model
from fedaux.model.module import MultiTaskModule
from fedaux.unknown import FeatureSums, feature_sums

WEIGHTING_STATE = "weighting"  # namespace of what the loss weighting keeps between fits (DWA's history)
DPSGD_STATE = "dpsgd"  # namespace of the DP-SGD accountant's history
BATCHNORM_STATE = "batchnorm"  # namespace of a base station's own BatchNorm statistics (federated.batchnorm=local)
CLIENT_METRIC_PREFIXES = ("train/", "personal/", "privacy/")  # what a fit reports to the server


@dataclass
class ClientFit:
    """What one base station's local fit produced, ready to send.

    Attributes:
        client: the base station.
        upload: what it sends to its edge server (after its update stages: on the wire).
        local_state: what it keeps for its next round, by namespace.
        num_samples: its training windows (the aggregation weight).
        metrics: ``train/*`` epoch means of the last local epoch, ``personal/*`` scores of its own
            model (personalised strategies), ``privacy/client_epsilon`` (DP-SGD).
        seconds: wall time of the fit (Trainer set-up to teardown).
        loop_seconds: the part inside Lightning's training loop.
    """

    client: int
    upload: State
    local_state: LocalState
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    loop_seconds: float = 0.0


NAMESPACE_SEP = "::"


def flatten_local_state(state: Mapping[str, Mapping[str, torch.Tensor]]) -> State:
    """``{namespace: {entry: t}}`` -> ``{"namespace::entry": t}``: one flat record to store or send."""
    return {f"{ns}{NAMESPACE_SEP}{k}": v for ns, entries in state.items() for k, v in entries.items()}


def unflatten_local_state(flat: Mapping[str, torch.Tensor]) -> LocalState:
    """The inverse of :func:`flatten_local_state`."""
    out: LocalState = {}
    for key, value in flat.items():
        ns, sep, entry = key.partition(NAMESPACE_SEP)
        if not sep:
            raise ValueError(f"local-state entry {key!r} has no namespace ('<namespace>{NAMESPACE_SEP}<entry>')")
        out.setdefault(ns, {})[entry] = value
    return out


def client_metrics(callback_metrics: Mapping[str, Any]) -> dict[str, float]:
    """The fit's logged metrics a base station reports (:data:`CLIENT_METRIC_PREFIXES`), as floats."""
    return {k: float(v) for k, v in callback_metrics.items() if k.startswith(CLIENT_METRIC_PREFIXES)}


class _LoopClock(L.Callback):
    """Times the training loop inside a fit (``on_train_start`` to ``on_train_end``)."""

    direct_fit_safe = True  # reads nothing of the Trainer (fedaux.federated.fit_loop)

    def __init__(self) -> None:
        self.start = self.seconds = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds = time.perf_counter() - self.start


@dataclass
class FitOptions:
    """How every local fit trains (the ``federated`` section's fit keys and ``privacy.mode: dpsgd``)."""

    local_epochs: int = 1
    batch_size: int = 32
    gradient_clip_val: float | None = None
    dp_sgd: tuple[float, float, float] | None = None  # (clip_norm, noise_multiplier, delta)
    pretrain_rounds: int = 0  # rounds 1..pretrain_rounds fit without the main task (fedaux/federated/phases.py)
    fit_loop: str = "auto"  # federated.fit_loop: fedaux.federated.fit_loop's direct loop where it applies, or "trainer"

    @classmethod
    def from_config(cls, cfg: Any) -> FitOptions:
        fed = cfg.federated
        return cls(int(fed.local_epochs), int(fed.batch_size), fed.gradient_clip_val, dp_sgd_settings(cfg.privacy),
                   int(fed.pretrain_rounds), str(fed.get("fit_loop", "auto")))


class ClientRuntime:
    """A base station's side of the federation: fit, then the base station's update stages.

    Args:
        model: the multi-task LightningModule, reused for every fit (its state is reloaded first).
        initial_state: the model's seeded initial weights (equal everywhere: personal heads start here).
        strategy: the federated strategy (what a base station loads, trains with and uploads).
        pipeline: the update pipeline (this class runs its ``base_station.*`` slots).
        options: the fit settings.
        seed: the experiment seed (fits are seeded by :func:`~fedaux.federated.seeds.fit_seed`).
        callbacks: Lightning callbacks added to every fit's Trainer (``logging.callbacks``).
        trainer_options: accelerator, devices and precision.
        test: the held-out flows, scored by personalised strategies' own models (None: not scored).
    """

    def __init__(self, model: MultiTaskModule, initial_state: State, strategy: Strategy, pipeline: UpdatePipeline,
                 options: FitOptions, seed: int = 0, callbacks: Sequence[L.Callback] = (),
                 trainer_options: TrainerOptions | None = None, test: SampleSet | None = None) -> None:
        self.model, self.initial_state, self.strategy, self.pipeline = model, initial_state, strategy, pipeline
        self.options, self.seed = options, seed
        self.callbacks = list(callbacks)
        self.trainer_options = trainer_options or TrainerOptions()
        self.test = test if strategy.scores_own_models else None

    @classmethod
    def from_config(cls, cfg: Any, target_classes: Mapping[str, int], *, callbacks: Sequence[L.Callback] = (),
                    test: SampleSet | None = None) -> ClientRuntime:
        """Build everything from the experiment config; the same on the server, in a worker and on a node.

        The model's initial weights come from ``cfg.seed`` alone (the global RNG is left as it
        was), so every process that builds a runtime starts from the same model.
        """
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            model = build_model(cfg.model, dict(target_classes), cfg.data.packets, len(cfg.data.features),
                                features=list(cfg.data.features))
        strategy = build_strategy(cfg.federated, model)
        options = TrainerOptions.from_config(cfg.trainer)
        return cls(model, cpu_state(model), strategy, build_pipeline(cfg, model, strategy), FitOptions.from_config(cfg),
                   seed=int(cfg.seed), callbacks=callbacks, trainer_options=options, test=test)

    def fit(self, client: int, samples: SampleSet, payload: Mapping[str, torch.Tensor], rnd: int,
            local_state: Mapping[str, State] | None = None, *, seed: int | None = None,
            extra_callbacks: Sequence[L.Callback] = ()) -> ClientFit:
        """Start the model from ``payload`` (and the base station's ``local_state``), fit it on
        ``samples``, run the base station's update stages and return what it sends and keeps.

        Args:
            payload: the decoded downlink (the strategy's payload) of round ``rnd``.
            seed: the fit's seed; :func:`~fedaux.federated.seeds.fit_seed` of (seed, rnd, client) by default.
            extra_callbacks: Lightning callbacks for this fit only (tests, benchmarks).
        """
        model, strategy, options = self.model, self.strategy, self.options
        seed = fit_seed(self.seed, rnd, client) if seed is None else seed
        local_state = dict(local_state or {})
        strategy_state = local_state.get(STRATEGY_STATE, {})
        strategy.load_client(model, payload, strategy_state, self.initial_state)
        own_statistics = local_state.get(BATCHNORM_STATE)
        if own_statistics:  # federated.batchnorm=local: this base station's statistics, from its last fit
            with torch.no_grad():
                model_state = model.state_dict()
                for key, value in own_statistics.items():
                    model_state[key].copy_(value)
        model.weighting.load_local_state(dict(local_state.get(WEIGHTING_STATE, {})))
        method_callbacks = strategy.client_callbacks(model, payload, strategy_state)
        # RLW draws and any dropout repeat exactly for this (round, client). On the CPU only the CPU
        # generator draws; torch.manual_seed would also visit every other device backend (~1 ms a fit).
        if self.trainer_options.on_cpu:
            torch.default_generator.manual_seed(seed)
        else:
            torch.manual_seed(seed)
        start = time.perf_counter()
        gradient_clip_val = options.gradient_clip_val
        # Lightning clips only under automatic optimisation; a module that steps by hand (gradient-based
        # weightings) clips in its own on_before_optimizer_step, at the same point of the step.
        model.manual_clip_val = None if model.automatic_optimization else gradient_clip_val
        if options.dp_sgd is not None:  # Opacus clips every sample's gradient; Lightning must not clip the batch's
            history = local_state.get(DPSGD_STATE, {}).get("accountant")
            model.dp_sgd = DPSGD(*options.dp_sgd, seed=seed, history=history)
            gradient_clip_val = None
        clock = _LoopClock()
        callbacks = [*method_callbacks, *self.callbacks, *extra_callbacks, clock]
        epochs = strategy.local_epochs(options.local_epochs)
        clip = gradient_clip_val if model.automatic_optimization else None
        datamodule = ClientDataModule(samples, batch_size=options.batch_size, seed=seed, client=client, rnd=rnd)
        model.pretraining = round_phase(rnd, options.pretrain_rounds) == PRETRAIN
        logged: Mapping[str, Any] = {}
        try:
            if options.fit_loop == "auto" and direct_fit_blocker(model, callbacks, self.trainer_options,
                                                                 model.dp_sgd is not None) is None:
                DirectFitLoop(epochs, clip, callbacks).fit(model, datamodule)
            else:
                with quiet_lightning():
                    trainer = client_trainer(epochs, clip, callbacks, self.trainer_options)
                    trainer.fit(model, datamodule)
                logged = trainer.callback_metrics
        finally:
            model.pretraining = False
            private, model.dp_sgd = model.dp_sgd, None
            if private is not None:
                private.close()
        seconds = time.perf_counter() - start  # set-up to teardown
        # The module's own epoch means (both loops); what other callbacks logged under the client prefixes.
        metrics = {**client_metrics(logged), **client_metrics(model.epoch_metrics)}
        if private is not None:
            metrics["privacy/client_epsilon"] = private.epsilon()
        if self.test is not None:
            metrics.update(personal_scores(model, self.test, samples))
        update = Update(state={}, reference=payload, sender=client, weight=len(samples), seed=seed)
        context = StageContext(rnd, model=model, fit_callbacks=method_callbacks)
        update, kept = self.pipeline.at_base_station(update, context, local_state)
        _set(kept, WEIGHTING_STATE, model.weighting.local_state())
        if strategy.local_keys:
            model_state = model.state_dict()
            _set(kept, BATCHNORM_STATE, {k: model_state[k].detach().clone() for k in sorted(strategy.local_keys)})
        _set(kept, DPSGD_STATE, {"accountant": private.history_tensor()} if private is not None else {})
        return ClientFit(client, update.state, kept, len(samples), metrics, seconds, clock.seconds)

    def feature_sums(self, samples: SampleSet, state: Mapping[str, torch.Tensor]) -> FeatureSums:
        """A base station's part of the statistics pass after the last round: the final global
        ``state`` loaded, per main-task class the count and feature sum of its labelled training
        windows and the sum of their features' outer products (:class:`~fedaux.unknown.FeatureSums`).
        Only these sums leave the base station."""
        model = self.model
        load_state(model, state)
        task = model.tasks[model.main_task]
        return feature_sums(model, samples.x, samples.targets[task.target], task.out_features)


def _set(local_state: LocalState, namespace: str, entries: Mapping[str, torch.Tensor]) -> None:
    if entries:
        local_state[namespace] = dict(entries)
    else:
        local_state.pop(namespace, None)


def to_update(fit: ClientFit, edge_of_client: EdgeOfClient, *, state_stays_on_node: bool = False) -> ClientUpdate:
    """The update the server receives from a finished fit (every engine calls this).

    Args:
        state_stays_on_node: the base station keeps its local state itself (a Flower node), so the
            server gets none to keep; the in-process engines hand it to the server.
    """
    return ClientUpdate(fit.client, int(edge_of_client[fit.client]), fit.upload, fit.num_samples, dict(fit.metrics),
                        fit.seconds, local_state=None if state_stays_on_node else fit.local_state,
                        loop_seconds=fit.loop_seconds)
