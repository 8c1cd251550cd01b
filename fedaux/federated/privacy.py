"""Client-level differential privacy for federated updates, with Opacus' Rényi-DP accountant.

Each base station's update (its new state minus the payload it started from, every float entry,
BatchNorm statistics and control variates included) is clipped to L2 norm ``clip_norm``, and
Gaussian noise of standard deviation ``noise_multiplier * clip_norm``, scaled to the largest
weight's share of the average, is added:

* ``central``: the edge server clips each of its base stations' updates and adds the noise to
  its sample-weighted average before sending it up. Protects every base station against the top
  level, other edge servers and anyone who sees the global model; the edge server itself sees the
  clipped updates and must be trusted.
* ``local``: each base station clips and noises its own update before it leaves (noise of the
  same scale on every update). Protects against its edge server too, at the cost of noise that
  adds up over base stations instead of once per edge server.

Where each mechanism runs in an update's way is the update pipeline's order
(:data:`fedaux.federated.pipeline.SLOTS`): local DP is the ``base_station.privatise`` stage, before
the uplink codec, so compression only post-processes a private update; central DP is the
``edge.clip`` and ``edge.noise`` stages around the edge server's average.

The accountant (``opacus.accountants.RDPAccountant``, no formula written here) composes one
sampled Gaussian mechanism per round with sampling rate = the share of base stations taking
part, and gives the cumulative epsilon at ``delta``. Client-level neighbouring datasets add or
remove one base station; for ``local`` the noise must also hide a replaced update (sensitivity
``2 * clip_norm``), so the accountant is given half the noise multiplier.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from fedaux.errors import ConfigError

if TYPE_CHECKING:
    from opacus import GradSampleModule, PrivacyEngine

PRIVACY_MODES = ("none", "central", "local", "dpsgd")  # privacy.mode
State = dict[str, torch.Tensor]


def update_norm(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> float:
    """L2 norm of ``state - reference`` over the float entries."""
    return math.sqrt(sum(float((state[k].double() - reference[k].double()).pow(2).sum())
                         for k in reference if reference[k].is_floating_point()))


def clip_update(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], bound: float) -> State:
    """``reference + (state - reference) * min(1, bound / norm)``; ``state`` itself when within the bound.

    Example:
        >>> ref = {"w": torch.zeros(2)}
        >>> clip_update({"w": torch.tensor([3.0, 4.0])}, ref, 1.0)["w"]
        tensor([0.6000, 0.8000])
    """
    norm = update_norm(state, reference)
    if norm <= bound:
        return dict(state)
    factor = bound / norm
    return {k: (reference[k] + (v - reference[k]) * factor).to(v.dtype) if v.is_floating_point() else v
            for k, v in state.items()}


def add_noise(state: Mapping[str, torch.Tensor], std: float, generator: torch.Generator) -> State:
    """Gaussian noise of standard deviation ``std`` on every float entry; ``state`` itself when ``std`` is 0."""
    if std == 0:
        return dict(state)
    return {k: v + torch.randn(v.shape, generator=generator, dtype=v.dtype) * std if v.is_floating_point() else v
            for k, v in state.items()}


DPSGD_HISTORY = "dpsgd/accountant"  # a base station's DP-SGD accountant history in its local state


class DPSGD:
    """Sample-level DP-SGD (Abadi et al. 2016) through Opacus inside one base station's local fit.

    ``MultiTaskModule.configure_optimizers`` hands its optimiser to :meth:`make_private`, which
    wraps the module for per-sample gradients and returns Opacus' ``DPOptimizer`` (per-sample
    clipping to ``clip_norm``, Gaussian noise ``noise_multiplier * clip_norm``). Batches are the
    shuffled fixed-size batches of every other fit, not Poisson samples; Opacus then accounts with
    sampling rate ``1 / batches`` (its documented approximation). The accountant's history is the
    base station's local state, so its epsilon accumulates over the rounds it takes part in.
    BatchNorm mixes samples, so the config switches ``model.trunk.norm`` to ``group`` for this mode.
    """

    def __init__(self, clip_norm: float, noise_multiplier: float, delta: float, seed: int,
                 history: torch.Tensor | None = None) -> None:
        self.clip_norm, self.noise_multiplier, self.delta, self.seed = clip_norm, noise_multiplier, delta, seed
        self.history = [] if history is None else [(float(z), float(q), int(n)) for z, q, n in history.tolist()]
        self._engine: PrivacyEngine | None = None
        self._module: GradSampleModule | None = None

    def make_private(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, data_loader) -> torch.optim.Optimizer:
        from opacus import PrivacyEngine

        self._engine = PrivacyEngine(accountant="rdp")
        self._engine.accountant.history = list(self.history)
        self._module, private, _ = self._engine.make_private(
            module=module, optimizer=optimizer, data_loader=data_loader, noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.clip_norm, poisson_sampling=False, noise_generator=_generator(self.seed))
        return private

    def close(self) -> None:
        """Remove Opacus' hooks (the in-process engine reuses one model for every base station)."""
        if self._module is not None:
            self._module._close()
            self._module = None
        if self._engine is not None:
            self.history = [tuple(h) for h in self._engine.accountant.history]

    def epsilon(self) -> float:
        if not self.history:
            return 0.0
        from opacus.accountants import RDPAccountant

        accountant = RDPAccountant()
        accountant.history = list(self.history)
        return float(accountant.get_epsilon(self.delta)) if self.noise_multiplier > 0 else math.inf

    def history_tensor(self) -> torch.Tensor:
        """``(k, 3)`` float64 rows ``(noise multiplier, sampling rate, steps)``: storable local state."""
        return torch.tensor(self.history, dtype=torch.float64).reshape(-1, 3)


class ClientLevelDP:
    """Clipping, noise and the accountant of one experiment (the ``privacy`` config section).

    Args:
        mode: ``central`` or ``local`` (see the module docstring).
        clip_norm: L2 bound on each base station's update.
        noise_multiplier: noise standard deviation over the clipping bound.
        delta: the delta at which epsilon is reported.
        max_epsilon: stop before a round would take epsilon above this (None: no limit).
    """

    def __init__(self, mode: str = "central", clip_norm: float = 1.0, noise_multiplier: float = 1.0,
                 delta: float = 1e-5, max_epsilon: float | None = None) -> None:
        if mode not in ("central", "local"):
            raise ConfigError(f"privacy.mode={mode!r}: client-level DP is 'central' or 'local'")
        check_mechanism(clip_norm, noise_multiplier, delta)
        self.mode, self.clip_norm, self.noise_multiplier = mode, clip_norm, noise_multiplier
        self.delta, self.max_epsilon = delta, max_epsilon
        from opacus.accountants import RDPAccountant  # here: Opacus loads slowly and configs import this module

        self.accountant = RDPAccountant()

    @classmethod
    def from_config(cls, cfg: Any) -> ClientLevelDP | None:
        """None for ``mode: none`` and ``dpsgd`` (which privatises inside the local fit: :class:`DPSGD`)."""
        if cfg is None or cfg.mode in ("none", "dpsgd"):
            return None
        return cls(cfg.mode, cfg.clip_norm, cfg.noise_multiplier, cfg.delta, cfg.max_epsilon)

    # ------------------------------------------------------------------ mechanisms
    def at_client(self, upload: State, payload: Mapping[str, torch.Tensor], seed: int) -> State:
        """Local mode: clip the update and add noise before it leaves the base station."""
        if self.mode != "local":
            return upload
        clipped = clip_update(upload, payload, self.clip_norm)
        return add_noise(clipped, self.noise_multiplier * self.clip_norm, _generator(seed))

    def clip_at_edge(self, state: State, payload: Mapping[str, torch.Tensor]) -> State:
        """Central mode: the edge server clips each base station's update as it arrives."""
        return clip_update(state, payload, self.clip_norm) if self.mode == "central" else state

    def noise_at_edge(self, edge_state: State, max_weight_share: float, seed: int) -> State:
        """Central mode: noise on an edge server's weighted average; the largest share of the
        weights bounds how far one base station can move that average."""
        if self.mode != "central":
            return edge_state
        return add_noise(edge_state, self.noise_multiplier * self.clip_norm * max_weight_share, _generator(seed))

    # ------------------------------------------------------------------ accounting
    @property
    def _accounted_multiplier(self) -> float:
        return self.noise_multiplier / 2 if self.mode == "local" else self.noise_multiplier

    def epsilon(self) -> float:
        """Cumulative epsilon at ``delta`` after the rounds accounted so far (inf with no noise)."""
        if not self.accountant.history:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        return float(self.accountant.get_epsilon(self.delta))

    def epsilon_after(self, sample_rate: float) -> float:
        """Epsilon if one more round were accounted, without accounting it."""
        if self.noise_multiplier == 0:
            return math.inf
        trial = copy.deepcopy(self.accountant)
        trial.step(noise_multiplier=self._accounted_multiplier, sample_rate=sample_rate)
        return float(trial.get_epsilon(self.delta))

    def would_exceed(self, sample_rate: float) -> bool:
        return self.max_epsilon is not None and self.epsilon_after(sample_rate) > self.max_epsilon

    def rounds_within_budget(self, sample_rate: float, wanted: int) -> int:
        """How many of the next ``wanted`` rounds fit under ``max_epsilon`` (each round takes part of
        the same share of base stations, so the budget is known before the rounds run)."""
        if self.max_epsilon is None:
            return wanted
        trial = copy.deepcopy(self)
        for allowed in range(wanted):
            if trial.would_exceed(sample_rate):
                return allowed
            trial.account(sample_rate)
        return wanted

    def account(self, sample_rate: float) -> float:
        """Add one round; returns the new cumulative epsilon."""
        if self.noise_multiplier > 0:
            self.accountant.step(noise_multiplier=self._accounted_multiplier, sample_rate=sample_rate)
        else:
            self.accountant.history.append((0.0, sample_rate, 1))
        return self.epsilon()

    def state_dict(self) -> dict[str, Any]:
        return {"history": [tuple(h) for h in self.accountant.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.accountant.history = [tuple(h) for h in state.get("history", [])]


def dp_sgd_settings(cfg: Any) -> tuple[float, float, float] | None:
    """``(clip_norm, noise_multiplier, delta)`` for ``privacy.mode: dpsgd``, else None."""
    if cfg is None or cfg.mode != "dpsgd":
        return None
    return float(cfg.clip_norm), float(cfg.noise_multiplier), float(cfg.delta)


def _generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return generator


# Weightings that need a gradient per task (or learn parameters of their own): Opacus computes
# per-sample gradients of one loss, so DP-SGD cannot run them.
DPSGD_INCOMPATIBLE_WEIGHTINGS = ("uncertainty", "mgda", "pcgrad", "cagrad", "nash_mtl", "upgrad")


def check_config(cfg: Any) -> None:
    """``privacy``'s rules (called by :func:`fedaux.config.validate`)."""
    mode = cfg.privacy.mode
    if mode == "dpsgd" and cfg.model.weighting.name in DPSGD_INCOMPATIBLE_WEIGHTINGS:
        raise ConfigError(f"privacy.mode=dpsgd with model.weighting.name={cfg.model.weighting.name!r}: Opacus computes "
                          "per-sample gradients of one loss; use a loss weighting without parameters (random, equal, "
                          "fixed, dwa, famo)")
    if mode == "central" and cfg.federated.aggregation != "fedavg":
        raise ConfigError(f"privacy.mode=central needs federated.aggregation=fedavg (got "
                          f"{cfg.federated.aggregation!r}): the noise is calibrated to one update's weight in an average")
    if mode in ("central", "local"):
        check_mechanism(cfg.privacy.clip_norm, cfg.privacy.noise_multiplier, cfg.privacy.delta)


def check_mechanism(clip_norm: float, noise_multiplier: float, delta: float) -> None:
    """The Gaussian mechanism's options are in range (the config check and :class:`ClientLevelDP` both ask)."""
    if clip_norm <= 0 or noise_multiplier < 0 or not 0 < delta < 1:
        raise ConfigError(f"privacy: clip_norm={clip_norm} must be > 0, noise_multiplier={noise_multiplier} >= 0, "
                          f"delta={delta} in (0, 1)")
