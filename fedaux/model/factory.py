"""Building the multi-task model from the ``model`` config section and the tasks' output sizes.

The model knows nothing of flows or data sets: it needs the number of classes of every target its
heads predict, the window length and the number of per-packet channels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import OmegaConf
from torch import nn

from fedaux.errors import ConfigError
from fedaux.model.heads import TaskHead
from fedaux.model.losses import DEFAULT_LOSS, LOSSES
from fedaux.model.module import MultiTaskModule, TaskSpec
from fedaux.model.semi import CONTRASTIVE, CONTRASTIVE_FEATURES, CONTRASTIVE_LOSS, build_semi
from fedaux.model.trunk import ConvTrunk
from fedaux.model.weighting import build_weighting
from fedaux.registry import import_by_path


def task_specs(model_cfg, num_classes: Mapping[str, int]) -> dict[str, TaskSpec]:
    """A :class:`TaskSpec` per configured head, output sizes inferred from ``num_classes``.

    Args:
        num_classes: per data target, its number of classes (0 for a continuous target).
    """
    specs = {}
    for name, head in model_cfg.heads.items():
        if head.kind == CONTRASTIVE:  # learns from two views of each window, not from a target
            specs[name] = TaskSpec(name=name, target="", kind=CONTRASTIVE, loss=head.loss or CONTRASTIVE_LOSS,
                                   out_features=head.out_features or CONTRASTIVE_FEATURES)
            continue
        if head.target not in num_classes:
            raise ConfigError(
                f"model.heads.{name}.target={head.target!r} is not a data target; defined: {sorted(num_classes)}"
            )
        classes = int(num_classes[head.target])
        if head.kind == "classification" and classes < 1:
            raise ConfigError(
                f"model.heads.{name}: target {head.target!r} is continuous; give it data.targets.{head.target}.bins "
                "or make the head kind 'regression'"
            )
        inferred = classes if head.kind == "classification" else 1
        specs[name] = TaskSpec(
            name=name,
            target=head.target,
            kind=head.kind,
            loss=head.loss or DEFAULT_LOSS[head.kind],
            out_features=head.out_features or inferred,
        )
    return specs


def build_model(model_cfg, num_classes: Mapping[str, int], packets: int, in_channels: int,
                features: Sequence[str] | None = None) -> MultiTaskModule:
    """Trunk, heads, weighting and the semi-supervised losses from config, injected into a
    :class:`MultiTaskModule`.

    Args:
        model_cfg: the ``model`` config section.
        num_classes: per data target, its number of classes (0 for a continuous target).
        packets: window length.
        in_channels: ``C``, per-packet features (``len(data.features)``).
        features: ``data.features``, the names of those channels, which the augmentations of
            ``model.consistency`` and contrastive heads need; None builds a model that predicts
            but cannot train with them.

    The model maps ``(B, C, packets)`` windows to ``{task: (B, out_features)}``.
    """
    trunk_cfg = model_cfg.trunk
    trunk_cls = import_by_path(trunk_cfg.cls, "model.trunk.cls") if trunk_cfg.cls else ConvTrunk
    trunk = trunk_cls(
        packets=packets,
        in_channels=in_channels,
        channels=list(trunk_cfg.channels),
        convs_per_block=trunk_cfg.convs_per_block,
        kernel_size=trunk_cfg.kernel_size,
        dense=list(trunk_cfg.dense),
        dropout=trunk_cfg.dropout,
        norm=trunk_cfg.norm,
    )
    specs = task_specs(model_cfg, num_classes)
    heads: dict[str, nn.Module] = {}
    for name, head in model_cfg.heads.items():
        head_cls = import_by_path(head.cls, f"model.heads.{name}.cls") if head.cls else TaskHead
        heads[name] = head_cls(in_features=trunk.out_features, out_features=specs[name].out_features, hidden=head.hidden)
    order = [model_cfg.main_task] + [t for t in specs if t != model_cfg.main_task]
    weighting = build_weighting(model_cfg.weighting, order, model_cfg.main_task)
    optimizer = OmegaConf.to_container(model_cfg.optimizer) if OmegaConf.is_config(model_cfg.optimizer) else dict(model_cfg.optimizer)
    if optimizer is not None and not isinstance(optimizer, dict):
        raise ConfigError(f"model.optimizer must be a mapping such as {{name: adam, lr: 0.001}}, got {optimizer!r}")
    consistency, views = build_semi(model_cfg, features)
    return MultiTaskModule(trunk, heads, specs, weighting, model_cfg.main_task, optimizer,
                           consistency=consistency, contrastive=views)


HEAD_KINDS = ("classification", "regression", CONTRASTIVE)


def check_config(cfg: Any) -> None:
    """``model.heads``' rules (called by :func:`fedaux.config.validate`): each head learns a defined
    target, with a known kind and loss, and the main task has one."""
    model = cfg.model
    if model.main_task not in model.heads:
        raise ConfigError(f"model.main_task={model.main_task!r} has no head; heads: {sorted(model.heads)}")
    for name, head in model.heads.items():
        if head.kind not in HEAD_KINDS:
            raise ConfigError(f"model.heads.{name}.kind={head.kind!r} is not valid; choose one of {list(HEAD_KINDS)}")
        if head.kind == CONTRASTIVE:
            _check_contrastive_head(name, head, model.main_task)
            continue
        if head.target is None:
            raise ConfigError(f"model.heads.{name}.target is missing: name one of data.targets {sorted(cfg.data.targets)}")
        if head.target not in cfg.data.targets:
            raise ConfigError(
                f"model.heads.{name}.target={head.target!r} is not a data target; defined: {sorted(cfg.data.targets)}")
        if head.loss is not None and head.loss not in LOSSES:
            raise ConfigError(f"model.heads.{name}.loss={head.loss!r} is not valid; choose one of {LOSSES.names()}")


def _check_contrastive_head(name: str, head: Any, main_task: str) -> None:
    """A contrastive head learns from two views of every window (fedaux/model/semi.py): no target,
    the NT-Xent loss, and never the main task (it predicts no class)."""
    if name == main_task:
        raise ConfigError(f"model.main_task={main_task!r} is a contrastive head, which predicts nothing; "
                          "make it an auxiliary head")
    if head.target is not None:
        raise ConfigError(f"model.heads.{name}.target={head.target!r}: a contrastive head learns from two augmented "
                          "views of each window, not a target; remove the target")
    if head.loss not in (None, CONTRASTIVE_LOSS):
        raise ConfigError(f"model.heads.{name}.loss={head.loss!r} is not valid for a contrastive head; "
                          f"choose {CONTRASTIVE_LOSS!r}")
