"""Learning from unlabelled windows: the pseudo-label (FixMatch) and contrastive (NT-Xent) losses.

* **Consistency** (Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency
  and Confidence", NeurIPS 2020), ``model.consistency``: the main head's prediction on a weakly
  augmented unlabelled window becomes the target of a strongly augmented view of it when its
  softmax maximum reaches ``threshold``; ``weight`` times that loss is added to the main task's.
* **Contrastive head** (Chen et al., "A Simple Framework for Contrastive Learning of Visual
  Representations", ICML 2020, the NT-Xent loss), ``model.heads.<task>.kind: contrastive``: a
  projection head on the trunk's features of two augmented views of every window, whose loss
  pulls the two views of a window together and pushes other windows' away. It is an auxiliary
  task like any other, weighted by ``model.weighting``.

The augmentations are :mod:`fedaux.data.augment`'s; the module
(:class:`~fedaux.model.module.MultiTaskModule`) runs every view through the trunk in one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from fedaux.data.augment import build_augmentation
from fedaux.errors import ConfigError

View = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]  # (B, C, P) -> (B, C, P)
CONTRASTIVE = "contrastive"  # the head kind (model.heads.<task>.kind)
CONTRASTIVE_LOSS = "nt_xent"
CONTRASTIVE_FEATURES = 64  # a contrastive head's output size when model.heads.<task>.out_features is unset


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR.

    Row ``i`` of ``z1`` and of ``z2`` are two views of one window. With ``z`` the ``2N`` rows
    L2-normalised and ``s_ij = z_i . z_j / temperature``, each row's loss is
    ``-log(exp(s_ip) / sum_{k != i} exp(s_ik))``, ``p`` its other view; the result is their mean.

    Shape:
        ``z1``, ``z2``: ``(N, D)`` -> ``()``.

    Example:
        >>> z = torch.eye(2)
        >>> round(float(nt_xent(z, z, temperature=1.0)), 4)  # e / (e + 2) per row: -log(0.5761)
        0.5514
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent takes two (N, D) views of the same shape; got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    similarity = z @ z.T / temperature
    similarity = similarity.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    other_view = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(similarity, other_view)


def pseudo_label_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor,
                      threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's unlabelled loss and which windows it used.

    The weak view's class, where its softmax maximum is at least ``threshold``, is the target of
    the strong view's logits; the cross-entropy is summed over those windows and divided by all
    ``N`` (FixMatch's normalisation: fewer confident windows, a smaller loss). No gradient flows
    through the weak view.

    Shape:
        ``weak_logits``, ``strong_logits``: ``(N, K)`` -> ``(loss: (), confident: (N,) bool)``.

    Example:
        >>> weak = torch.tensor([[4.0, 0.0], [0.1, 0.0]])  # confident (0.98) and not (0.52)
        >>> loss, confident = pseudo_label_loss(weak, torch.zeros(2, 2), threshold=0.9)
        >>> confident.tolist(), round(float(loss), 4)  # log(2) / 2
        ([True, False], 0.3466)
    """
    probs = torch.softmax(weak_logits.detach(), dim=-1)
    confidence, pseudo = probs.max(dim=-1)
    confident = confidence >= threshold
    per_window = F.cross_entropy(strong_logits, pseudo, reduction="none")
    loss = (per_window * confident.to(per_window.dtype)).sum() / max(len(per_window), 1)
    return loss, confident


@dataclass(frozen=True)
class Consistency:
    """What the module needs for pseudo-labels: ``weight`` times :func:`pseudo_label_loss` at
    ``threshold``, between a ``weak`` and a ``strong`` view of each unlabelled window."""

    weight: float
    threshold: float
    weak: View
    strong: View


@dataclass(frozen=True)
class ContrastiveViews:
    """A contrastive head's NT-Xent ``temperature`` and what makes each of a window's two views
    (None: a model built without ``data.features``, for prediction only; it cannot train)."""

    temperature: float
    augment: View | None


def build_semi(model_cfg: Any, features: Sequence[str] | None) -> tuple[Consistency | None, dict[str, ContrastiveViews]]:
    """The ``model.consistency`` section (None when its weight is 0) and every contrastive head's views.

    Args:
        features: ``data.features``, the windows' channels (None: augmentations are not built).
    """
    section = model_cfg.consistency
    strong = list(section.strong)
    consistency = None
    if section.weight > 0 and features is not None:
        consistency = Consistency(float(section.weight), float(section.threshold),
                                  build_augmentation(list(section.weak), features, "model.consistency.weak"),
                                  build_augmentation(strong, features, "model.consistency.strong"))
    views = {}
    for name, head in model_cfg.heads.items():
        if head.kind != CONTRASTIVE:
            continue
        specs = strong if head.augment is None else list(head.augment)
        key = "model.consistency.strong" if head.augment is None else f"model.heads.{name}.augment"
        augment = build_augmentation(specs, features, key) if features is not None else None
        views[name] = ContrastiveViews(float(head.temperature), augment)
    return consistency, views


def check_config(cfg: Any) -> None:
    """``model.consistency``'s and contrastive heads' rules (called by :func:`fedaux.config.validate`)."""
    section = cfg.model.consistency
    if section.weight < 0:
        raise ConfigError(f"model.consistency.weight={section.weight} must be >= 0 (0 turns pseudo-labels off)")
    if not 0 < section.threshold <= 1:
        raise ConfigError(f"model.consistency.threshold={section.threshold} must be in (0, 1]")
    contrastive = [name for name, head in cfg.model.heads.items() if head.kind == CONTRASTIVE]
    if section.weight > 0:
        main = cfg.model.heads[cfg.model.main_task]
        if main.kind != "classification":
            raise ConfigError(f"model.consistency.weight={section.weight}: pseudo-labels need a classification main "
                              f"task; model.heads.{cfg.model.main_task}.kind is {main.kind!r}")
    for name in contrastive:
        head = cfg.model.heads[name]
        if head.temperature <= 0:
            raise ConfigError(f"model.heads.{name}.temperature={head.temperature} must be > 0")
        if head.augment is not None and not head.augment:
            raise ConfigError(f"model.heads.{name}.augment is empty: its two views would be the same window; "
                              "name augmentations, or null for model.consistency.strong")
    if (section.weight > 0 or contrastive) and cfg.privacy.mode == "dpsgd":
        used = "model.consistency.weight > 0" if section.weight > 0 else f"the contrastive head {contrastive[0]!r}"
        raise ConfigError(f"privacy.mode=dpsgd cannot be used with {used}: DP-SGD bounds each window's gradient, and "
                          "these losses tie a window's gradient to other windows and views of the batch")
    build_semi(cfg.model, list(cfg.data.features))  # every augmentation list, with its options, tried once
