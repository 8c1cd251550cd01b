"""Unknown-traffic detection: how unlike every class it knows a flow looks to the model.

Every flow gets an **unknown score** beside its class; higher means less like any known class. A
score is a function in :data:`UNKNOWN_SCORES` (``model.unknown.score`` chooses the one
``fedaux-predict`` uses; ``fedaux-eval`` reports them all). Each scores the mean of the flow's
windows' outputs, as a flow's class is the argmax of its windows' mean probability:

* ``msp``: one minus the maximum of the flow's mean softmax probability (Hendrycks & Gimpel, arXiv
  1610.02136), the quantity ``--min-confidence`` thresholds: the baseline.
* ``energy``: the free energy ``-T logsumexp(z / T)`` of the flow's mean main-task logits ``z``
  (Liu et al., arXiv 2010.03759).
* ``mahalanobis``: the squared Mahalanobis distance of the flow's mean trunk features to the
  nearest class mean under one shared (tied) covariance (Lee et al., arXiv 1807.03888).
* ``relative_mahalanobis``: that distance minus the distance to one class-agnostic Gaussian of the
  same windows (Ren et al., arXiv 2106.09022), from the same sums.

The class means and covariance come from **federated sums** (:class:`FeatureSums`): after the last
round every base station loads the final global model and adds up, over its labelled training
windows, per class the count and the sum of the trunk's features, and the sum of their outer
products. The server adds those exact float64 sums; only they leave a base station, never a
feature of a window. :meth:`FeatureStatistics.from_sums` derives the means and the pooled
within-class covariance, shrunk towards a scaled identity (Oracle Approximating Shrinkage, Chen et
al., IEEE TSP 2010, unless ``model.unknown.shrinkage`` fixes the intensity).

A threshold on a score keeps the flows at or below it as known. :func:`threshold_keeping` gives
the one that keeps 95% of the known held-out flows; :func:`auroc` and :func:`detection_report`
measure how well a score separates known flows from flows of classes the model never saw.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedaux.errors import ConfigError
from fedaux.registry import Registry

KNOWN_KEPT = 0.95  # the suggested threshold keeps this share of the known held-out flows
STATISTICS_FILE = "unknown.pt"  # the feature statistics, in the run folder beside model.pt
# Keys a predictor may add beside its {task: (N, K) probabilities} for the scores that need them.
WINDOW_LOGITS = "__logits__"  # (N, K) main-task logits
WINDOW_FEATURES = "__features__"  # (N, D) the trunk's features


# ---------------------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class FeatureSums:
    """What one base station (or, added up, the federation) sends for the feature statistics.

    Attributes:
        count: ``(K,)`` int64 labelled windows per class.
        total: ``(K, D)`` float64 sum of those windows' features per class.
        outer: ``(D, D)`` float64 sum of ``f f^T`` over all of them (a tied covariance needs no
            per-class outer products).

    Sums are exact enough to add in any order: float64, from float32 features.

    Example:
        >>> a = FeatureSums.of(torch.tensor([[1.0, 0.0], [3.0, 2.0]]), torch.tensor([0, 0]), 2)
        >>> b = FeatureSums.of(torch.tensor([[0.0, 1.0]]), torch.tensor([1]), 2)
        >>> (a + b).count.tolist(), (a + b).total.tolist()
        ([2, 1], [[4.0, 2.0], [0.0, 1.0]])
    """

    count: torch.Tensor
    total: torch.Tensor
    outer: torch.Tensor

    @classmethod
    def zeros(cls, classes: int, dim: int) -> FeatureSums:
        return cls(torch.zeros(classes, dtype=torch.int64), torch.zeros(classes, dim, dtype=torch.float64),
                   torch.zeros(dim, dim, dtype=torch.float64))

    @classmethod
    def of(cls, features: torch.Tensor, labels: torch.Tensor, classes: int) -> FeatureSums:
        """Sums of ``features`` ``(N, D)`` with class ``labels`` ``(N,)`` (negative: no label, left out)."""
        features, labels = features.detach().to("cpu", torch.float64), labels.detach().to("cpu", torch.int64)
        keep = (labels >= 0) & (labels < classes)
        features, labels = features[keep], labels[keep]
        total = torch.zeros(classes, features.shape[1], dtype=torch.float64).index_add_(0, labels, features)
        return cls(torch.bincount(labels, minlength=classes), total, features.T @ features)

    def __add__(self, other: FeatureSums) -> FeatureSums:
        if self.total.shape != other.total.shape:
            raise ValueError(f"feature sums of shapes {tuple(self.total.shape)} and {tuple(other.total.shape)} "
                             "cannot be added: another model or class list")
        return FeatureSums(self.count + other.count, self.total + other.total, self.outer + other.outer)

    @property
    def windows(self) -> int:
        return int(self.count.sum())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """By name, as federated state travels: ``count``, ``sum``, ``outer``."""
        return {"count": self.count, "sum": self.total, "outer": self.outer}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> FeatureSums:
        """The inverse of :meth:`state_dict`, checked (what a base station sent may be malformed).

        Raises:
            ValueError: missing keys, or shapes that do not fit ``(K,)``, ``(K, D)``, ``(D, D)``.
        """
        missing = {"count", "sum", "outer"} - set(state)
        if missing:
            raise ValueError(f"feature sums lack {sorted(missing)}")
        count = torch.as_tensor(state["count"]).to(torch.int64)
        total = torch.as_tensor(state["sum"]).to(torch.float64)
        outer = torch.as_tensor(state["outer"]).to(torch.float64)
        if (count.dim() != 1 or total.dim() != 2 or total.shape[0] != count.shape[0]
                or outer.shape != (total.shape[1], total.shape[1])):
            raise ValueError(f"feature sums of shapes count {tuple(count.shape)}, sum {tuple(total.shape)}, outer "
                             f"{tuple(outer.shape)} do not fit (K,), (K, D), (D, D)")
        return cls(count, total, outer)


@torch.no_grad()
def feature_sums(model: Any, x: torch.Tensor, labels: torch.Tensor, classes: int, batch_size: int = 1024) -> FeatureSums:
    """A base station's share of the statistics: ``model`` (its trunk, in eval mode) over the windows
    ``x`` ``(N, C, packets)`` whose main-task ``labels`` ``(N,)`` are known (>= 0)."""
    keep = labels >= 0
    x, labels = x[keep], labels[keep]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        dim = int(model.trunk(x[:1].to(device)).shape[1]) if len(x) else int(model.trunk.out_features)
        sums = FeatureSums.zeros(classes, dim)
        for start in range(0, len(x), batch_size):
            features = model.trunk(x[start:start + batch_size].to(device))
            sums = sums + FeatureSums.of(features, labels[start:start + batch_size], classes)
    finally:
        model.train(was_training)
    return sums


def oas_shrinkage(covariance: torch.Tensor, samples: int) -> float:
    """Oracle Approximating Shrinkage intensity (Chen, Wiesel, Eldar & Hero, IEEE TSP 2010, eq. 23,
    written as scikit-learn's ``oas``) of an empirical ``(D, D)`` covariance from ``samples`` rows."""
    dim = covariance.shape[0]
    mu = float(torch.trace(covariance)) / dim
    alpha = float((covariance ** 2).mean())
    denominator = (samples + 1) * (alpha - mu ** 2 / dim)
    return 1.0 if denominator <= 0 else min((alpha + mu ** 2) / denominator, 1.0)


@dataclass(frozen=True)
class FeatureStatistics:
    """Class means and a shared precision matrix of the trunk's features, from federated sums.

    Attributes:
        sums: the federation's :class:`FeatureSums`.
        means: ``(K, D)`` float64 class means (NaN rows: classes without a labelled window).
        precision: ``(D, D)`` float64 inverse of the shrunk pooled within-class covariance.
        shrinkage: the intensity used, in [0, 1].
    """

    sums: FeatureSums
    means: torch.Tensor
    precision: torch.Tensor
    shrinkage: float

    @classmethod
    def from_sums(cls, sums: FeatureSums, shrinkage: float | None = None) -> FeatureStatistics:
        """Means ``total_k / count_k``; the pooled within-class covariance
        ``S = (sum f f^T - sum_k total_k total_k^T / count_k) / (N - K')`` over the N windows of the
        K' classes that have any; shrunk, ``(1 - s) S + s (tr S / D) I``, with ``s`` from
        :func:`oas_shrinkage` unless given. A covariance of zero trace (no spread at all) becomes I.

        Raises:
            ValueError: no labelled window at all.
        """
        count = sums.count.to(torch.float64)
        present = count > 0
        if not present.any():
            raise ValueError("no labelled window in the feature sums: no class mean to measure distances to")
        dim = sums.outer.shape[0]
        means = torch.full_like(sums.total, float("nan"))
        means[present] = sums.total[present] / count[present, None]
        scatter = sums.outer - sums.total[present].T @ (sums.total[present] / count[present, None])
        windows = int(count.sum())
        covariance = scatter / max(windows - int(present.sum()), 1)
        covariance = (covariance + covariance.T) / 2  # exact symmetry after the subtraction
        scale = float(torch.trace(covariance)) / dim
        if not scale > 0:
            covariance, scale, shrinkage = torch.eye(dim, dtype=torch.float64), 1.0, 1.0
        elif shrinkage is None:
            shrinkage = oas_shrinkage(covariance, windows)
        shrunk = (1 - shrinkage) * covariance + shrinkage * scale * torch.eye(dim, dtype=torch.float64)
        return cls(sums, means, torch.linalg.inv(shrunk), float(shrinkage))

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distances ``(N, K)`` of ``features`` ``(N, D)`` to every class mean
        (``inf`` to a class without a mean)."""
        f = features.to(torch.float64)
        present = ~torch.isnan(self.means[:, 0])
        means = torch.where(present[:, None], self.means, torch.zeros_like(self.means))
        fp = f @ self.precision
        mp = means @ self.precision
        d = (fp * f).sum(1, keepdim=True) - 2 * fp @ means.T + (mp * means).sum(1)[None, :]
        return torch.where(present[None, :], d.clamp_min(0), torch.full_like(d, math.inf))

    @functools.cached_property
    def background(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The class-agnostic Gaussian of the same windows, from the same sums: mean ``(D,)``
        ``sum_k total_k / N`` and precision ``(D, D)`` of their covariance ``sum f f^T / N - mu mu^T``,
        shrunk as the within-class one (the relative Mahalanobis score's reference)."""
        windows = self.sums.windows
        mean = self.sums.total.sum(0) / windows
        covariance = self.sums.outer / windows - torch.outer(mean, mean)
        covariance = (covariance + covariance.T) / 2
        dim = covariance.shape[0]
        scale = float(torch.trace(covariance)) / dim
        if not scale > 0:
            return mean, torch.eye(dim, dtype=torch.float64)
        shrinkage = oas_shrinkage(covariance, windows)
        shrunk = (1 - shrinkage) * covariance + shrinkage * scale * torch.eye(dim, dtype=torch.float64)
        return mean, torch.linalg.inv(shrunk)

    def background_distances(self, features: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distances ``(N,)`` of ``features`` ``(N, D)`` to :attr:`background`."""
        mean, precision = self.background
        centred = features.to(torch.float64) - mean
        return ((centred @ precision) * centred).sum(1).clamp_min(0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.sums.state_dict(), "means": self.means, "precision": self.precision,
                "shrinkage": torch.tensor(self.shrinkage, dtype=torch.float64)}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> FeatureStatistics:
        return cls(FeatureSums.from_state_dict(state), state["means"].to(torch.float64),
                   state["precision"].to(torch.float64), float(state["shrinkage"]))

    def save(self, path: str | Path) -> None:
        torch.save(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> FeatureStatistics:
        return cls.from_state_dict(torch.load(path, weights_only=True, map_location="cpu"))


# ---------------------------------------------------------------------------------------- scores
@dataclass(frozen=True)
class ScoreInputs:
    """What a score sees of ``N`` windows of ``F`` flows.

    Attributes:
        probs: ``(N, K)`` main-task softmax probabilities.
        flow_index: ``(N,)`` int64 flow of each window, ``0..F-1``.
        num_flows: ``F``.
        logits: ``(N, K)`` main-task logits (None: the model gives probabilities only, as an
            exported model does).
        features: ``(N, D)`` the trunk's features (None: not at hand).
        statistics: the run's :class:`FeatureStatistics` (None: the run has none).
        temperature: ``model.unknown.temperature`` (energy).
    """

    probs: torch.Tensor
    flow_index: torch.Tensor
    num_flows: int
    logits: torch.Tensor | None = None
    features: torch.Tensor | None = None
    statistics: FeatureStatistics | None = None
    temperature: float = 1.0


UnknownScore = Callable[[ScoreInputs], torch.Tensor]  # -> (F,) float64, higher: more unknown
UNKNOWN_SCORES: Registry[UnknownScore] = Registry("unknown-traffic score", "model.unknown.score")
_NEEDS: dict[str, frozenset[str]] = {}  # score name -> the optional inputs it needs ("logits", "features")


def register_score(name: str, needs: tuple[str, ...] = ()) -> Callable[[UnknownScore], UnknownScore]:
    """``@register_score("name", needs=("logits",))``: add a score to :data:`UNKNOWN_SCORES`, saying
    which optional :class:`ScoreInputs` it reads (``logits``, ``features``; ``features`` implies the
    run's statistics may be read too)."""

    def add(fn: UnknownScore) -> UnknownScore:
        _NEEDS[name] = frozenset(needs)
        return UNKNOWN_SCORES.register(name)(fn)

    return add


def score_needs(name: str) -> frozenset[str]:
    """The optional inputs score ``name`` reads (a score registered without saying: none)."""
    return _NEEDS.get(name, frozenset())


def flow_mean(values: torch.Tensor, flow_index: torch.Tensor, num_flows: int) -> torch.Tensor:
    """Per-flow mean of ``values`` ``(N,)`` or ``(N, K)`` -> ``(F,)`` or ``(F, K)``, float64 (NaN for
    a flow without windows)."""
    v = values.to(torch.float64)
    index = flow_index.to(torch.int64)
    shape = (num_flows, *v.shape[1:])
    sums = torch.zeros(shape, dtype=torch.float64).index_add_(0, index, v)
    counts = torch.bincount(index, minlength=num_flows).to(torch.float64)
    return sums / counts.reshape(-1, *([1] * (v.dim() - 1)))


def _require(inputs: ScoreInputs, score: str, what: str) -> torch.Tensor:
    value = getattr(inputs, what)
    if value is None:
        raise ConfigError(f"the unknown score {score!r} needs the model's {what}; an exported model gives "
                          "probabilities only: use the run folder (RUN_DIR without --model) or --unknown-score msp")
    return value


@register_score("msp")
def max_softmax(inputs: ScoreInputs) -> torch.Tensor:
    """``1 - max_k p_k`` of the flow's probability ``p`` ``(F, K)``, the mean of its windows'
    softmax ``(N, K)``: one minus the probability ``--min-confidence`` compares. ``(F,)``."""
    return 1 - flow_mean(inputs.probs, inputs.flow_index, inputs.num_flows).max(dim=1).values


@register_score("energy", needs=("logits",))
def energy(inputs: ScoreInputs) -> torch.Tensor:
    """``-T logsumexp(z / T)`` of the flow's mean main-task logits ``z`` ``(F, K)``, the mean of its
    windows' logits ``(N, K)``: ``(F,)``."""
    logits = _require(inputs, "energy", "logits")
    t = inputs.temperature
    return -t * torch.logsumexp(flow_mean(logits, inputs.flow_index, inputs.num_flows) / t, dim=1)


@register_score("mahalanobis", needs=("features",))
def mahalanobis(inputs: ScoreInputs) -> torch.Tensor:
    """``min_k (f - mu_k)^T Sigma^-1 (f - mu_k)`` of the flow's mean trunk features ``f`` ``(F, D)``,
    the mean of its windows' features ``(N, D)``, with the run's class means ``mu`` ``(K, D)`` and
    tied, shrunk covariance ``Sigma`` ``(D, D)`` (:class:`FeatureStatistics`): ``(F,)``.

    The statistics are of windows; averaging a known flow's windows shrinks the window-to-window
    spread around its class mean, while an unseen service's offset from every class mean stays."""
    features = _require(inputs, "mahalanobis", "features")
    if inputs.statistics is None:
        raise ConfigError(f"the unknown score 'mahalanobis' needs the run's feature statistics ({STATISTICS_FILE}), "
                          "written at the end of training; this run has none (trained with privacy on, or "
                          "before fedaux had them): use --unknown-score msp or energy")
    mean = flow_mean(features, inputs.flow_index, inputs.num_flows)
    return inputs.statistics.distances(mean).min(dim=1).values


@register_score("relative_mahalanobis", needs=("features",))
def relative_mahalanobis(inputs: ScoreInputs) -> torch.Tensor:
    """:func:`mahalanobis` minus the distance to the class-agnostic Gaussian of the same training
    windows (Ren et al., "A Simple Fix to Mahalanobis Distance", arXiv 2106.09022): ``(F,)``.

    Directions in which every class's windows spread (flow length, rate) inflate every class
    distance alike; subtracting the background distance leaves what separates the classes. Its
    statistics are the same federated sums: no other number leaves a base station."""
    features = _require(inputs, "relative_mahalanobis", "features")
    if inputs.statistics is None:
        raise ConfigError(f"the unknown score 'relative_mahalanobis' needs the run's feature statistics "
                          f"({STATISTICS_FILE}); this run has none: use --unknown-score msp or energy")
    mean = flow_mean(features, inputs.flow_index, inputs.num_flows)
    return inputs.statistics.distances(mean).min(dim=1).values - inputs.statistics.background_distances(mean)


def check_config(cfg: Any) -> None:
    """``model.unknown``'s options (called by :func:`fedaux.config.validate`, which checks the score's
    name against :data:`UNKNOWN_SCORES`)."""
    unknown = cfg.model.unknown
    if not unknown.temperature > 0:
        raise ConfigError(f"model.unknown.temperature={unknown.temperature} must be > 0")
    if unknown.shrinkage is not None and not 0.0 <= unknown.shrinkage <= 1.0:
        raise ConfigError(f"model.unknown.shrinkage={unknown.shrinkage} must be in [0, 1] (null: chosen by OAS)")


# ---------------------------------------------------------------------------------------- model outputs
@torch.no_grad()
def window_outputs(model: Any, x: np.ndarray | torch.Tensor, batch_size: int = 1024,
                   extras: bool = False) -> dict[str, np.ndarray]:
    """``model`` on windows ``x`` ``(N, C, packets)``: ``{task: (N, K) softmax}`` and, with ``extras``,
    :data:`WINDOW_LOGITS` ``(N, K)`` (main task) and :data:`WINDOW_FEATURES` ``(N, D)`` (trunk)."""
    tasks = list(model.task_names)
    out: dict[str, list[np.ndarray]] = {t: [] for t in [*tasks, *((WINDOW_LOGITS, WINDOW_FEATURES) if extras else ())]}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(x), batch_size):
            batch = torch.as_tensor(np.ascontiguousarray(x[start:start + batch_size])).to(device)
            features = model.trunk(batch)
            for task in tasks:
                logits = model.heads[task](features)
                out[task].append(torch.softmax(logits, dim=-1).cpu().numpy())
                if extras and task == model.main_task:
                    out[WINDOW_LOGITS].append(logits.cpu().numpy())
            if extras:
                out[WINDOW_FEATURES].append(features.cpu().numpy())
    finally:
        model.train(was_training)
    return {k: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for k, v in out.items()}


@dataclass
class UnknownScoring:
    """A run's unknown scores: what they need besides the model's outputs.

    Attributes:
        main_task: whose probabilities and logits the scores read.
        statistics: the run's feature statistics (None: none saved).
        temperature: ``model.unknown.temperature``.
        default: ``model.unknown.score``.
        suggested: per score, the threshold keeping 95% of the run's known held-out flows
            (``summary.json``'s ``suggested_unknown_threshold``).
    """

    main_task: str
    statistics: FeatureStatistics | None = None
    temperature: float = 1.0
    default: str = "msp"
    suggested: dict[str, float] | None = None

    def available(self, outputs: Mapping[str, Any]) -> list[str]:
        """The registered scores computable from ``outputs`` (and this run's statistics)."""
        names = []
        for name in UNKNOWN_SCORES.names():
            needs = score_needs(name)
            if "logits" in needs and WINDOW_LOGITS not in outputs:
                continue
            if "features" in needs and (WINDOW_FEATURES not in outputs or self.statistics is None):
                continue
            names.append(name)
        return names

    def score(self, name: str, outputs: Mapping[str, Any], flow_index: np.ndarray | torch.Tensor,
              num_flows: int) -> torch.Tensor:
        """Flow scores ``(F,)`` float64 of score ``name`` from a predictor's ``outputs`` of windows of
        flows ``flow_index`` ``(N,)``.

        Raises:
            ConfigError: an unknown name (the valid ones listed), or inputs the score needs missing.
        """
        fn = UNKNOWN_SCORES.get(name, "--unknown-score")

        def tensor(key: str) -> torch.Tensor | None:
            return torch.as_tensor(outputs[key]) if key in outputs else None

        inputs = ScoreInputs(torch.as_tensor(outputs[self.main_task]), torch.as_tensor(flow_index, dtype=torch.int64),
                             int(num_flows), tensor(WINDOW_LOGITS), tensor(WINDOW_FEATURES), self.statistics,
                             self.temperature)
        return fn(inputs).to(torch.float64)

    def threshold(self, name: str) -> float:
        """The suggested threshold of score ``name``.

        Raises:
            ConfigError: the run suggested none for it.
        """
        value = (self.suggested or {}).get(name)
        if value is None:
            raise ConfigError(f"the run suggests no threshold for the unknown score {name!r} (summary.json's "
                              f"suggested_unknown_threshold has {sorted(self.suggested or {})}); give a number")
        return float(value)


# ---------------------------------------------------------------------------------------- thresholds, AUROC
def threshold_keeping(scores: torch.Tensor, kept: float = KNOWN_KEPT) -> float:
    """The smallest of ``scores`` ``(F,)`` at or below which at least ``kept`` of them lie: with known
    flows' scores, the threshold that keeps that share of them (a flow scoring above it is unknown).

    Example:
        >>> threshold_keeping(torch.arange(1.0, 21.0))  # 19 of 20 at or below 19
        19.0
    """
    values = torch.sort(scores.to(torch.float64).flatten()).values
    if len(values) == 0:
        return float("nan")
    return float(values[max(math.ceil(kept * len(values) - 1e-9), 1) - 1])


def auroc(scores: torch.Tensor, is_unknown: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` ``(F,)`` as a detector of ``is_unknown`` ``(F,)`` flows:
    the probability that an unknown flow scores higher than a known one, ties counting half
    (Mann-Whitney U over the two groups, midranks in float64). NaN without both kinds of flow.

    Example:
        >>> auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([False, False, True, True]))
        0.75
    """
    s = scores.to(torch.float64).flatten()
    positive = is_unknown.to(torch.bool).flatten()
    n1, n0 = int(positive.sum()), int((~positive).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    values, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    first_rank = torch.cumsum(counts, 0) - counts + 1  # 1-based rank of each distinct value's first copy
    midrank = first_rank.to(torch.float64) + (counts.to(torch.float64) - 1) / 2
    u = float(midrank[inverse][positive].sum()) - n1 * (n1 + 1) / 2
    return u / (n1 * n0)


def detection_report(scores: torch.Tensor, is_unknown: torch.Tensor, suggested: float | None = None,
                     kept: float = KNOWN_KEPT) -> dict[str, Any]:
    """How one score ``scores`` ``(F,)`` separates known from ``is_unknown`` ``(F,)`` flows: ``auroc``
    (None without both kinds); the threshold that keeps ``kept`` of these known flows and the share
    of unknown flows it rejects (``threshold_95_known``, ``rejected_at_95_known``); with the run's
    ``suggested`` threshold, the shares of known flows it keeps and of unknown flows it rejects there
    (None where there are no such flows)."""
    s, unknown = scores.to(torch.float64), is_unknown.to(torch.bool)
    known_scores, unknown_scores = s[~unknown], s[unknown]
    at = threshold_keeping(known_scores, kept)
    key = f"{round(kept * 100):d}_known"

    def share(mask: torch.Tensor) -> float | None:
        return float(mask.to(torch.float64).mean()) if len(mask) else None

    area = auroc(s, unknown)
    report: dict[str, Any] = {
        "auroc": area if math.isfinite(area) else None,
        f"threshold_{key}": at,
        f"rejected_at_{key}": share(unknown_scores > at),
        "known_score_mean": float(known_scores.mean()) if len(known_scores) else None,
        "unknown_score_mean": float(unknown_scores.mean()) if len(unknown_scores) else None,
    }
    if suggested is not None:
        report["suggested_threshold"] = suggested
        report["known_kept_at_suggested"] = share(known_scores <= suggested)
        report["rejected_at_suggested"] = share(unknown_scores > suggested)
    return report
