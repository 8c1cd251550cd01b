"""The hard-parameter-sharing multi-task LightningModule."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import lightning as L
import numpy as np
import torch
from torch import nn
from torchmetrics import MeanAbsoluteError, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from fedaux.errors import ConfigError
from fedaux.labels import FLOW_KEY, IGNORE_INDEX
from fedaux.model.losses import LOSSES
from fedaux.model.optimizers import build_optimizer
from fedaux.model.semi import CONTRASTIVE, CONTRASTIVE_LOSS, Consistency, ContrastiveViews, nt_xent, pseudo_label_loss
from fedaux.model.weighting import GradientWeighting, LossWeighting, SteppedWeighting
from fedaux.unknown import flow_mean

if TYPE_CHECKING:
    from fedaux.federated.privacy import DPSGD


def flow_means(probs: torch.Tensor | np.ndarray, flow_index: torch.Tensor | np.ndarray, num_flows: int) -> torch.Tensor:
    """Mean window probability per flow: ``(N, K)``, ``(N,)`` -> ``(F, K)`` (zeros for flows with no
    window). A flow's class is the argmax of this mean, in training metrics and at prediction alike.

    Example:
        >>> flow_means(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.2, 0.8]]), torch.tensor([0, 0, 1]), 2)
        tensor([[0.5000, 0.5000],
                [0.2000, 0.8000]])
    """
    # One per-flow average for the whole project (unknown scores average logits and features with it).
    mean = flow_mean(torch.as_tensor(probs), torch.as_tensor(flow_index), num_flows)
    return torch.nan_to_num(mean, nan=0.0).to(torch.float32)


@dataclass(frozen=True)
class TaskSpec:
    """What a head learns: the batch key of its target, its kind, loss and output size."""

    name: str
    target: str
    kind: str
    loss: str
    out_features: int

    def __post_init__(self) -> None:
        if self.kind == CONTRASTIVE:  # no target: the loss compares two views of each window
            if self.loss != CONTRASTIVE_LOSS:
                raise ConfigError(f"model.heads.{self.name}: a contrastive head needs loss {CONTRASTIVE_LOSS!r}, "
                                  f"got {self.loss!r}")
            return
        LOSSES.get(self.loss, f"model.heads.{self.name}.loss")
        if self.kind == "classification" and self.loss != "cross_entropy":
            raise ConfigError(f"model.heads.{self.name}: a classification head needs loss 'cross_entropy', got {self.loss!r}")


class MultiTaskModule(L.LightningModule):
    """A shared trunk, one head per task and a loss weighting strategy.

    Args:
        trunk: maps ``(B, C, packets)`` to ``(B, F)``.
        heads: one module per task mapping ``(B, F)`` to ``(B, out_features)``.
        tasks: a :class:`TaskSpec` per head, same keys as ``heads``.
        weighting: combines the ``(T,)`` task losses into the total.
        main_task: the task whose accuracy is the headline metric.
        optimizer: the ``model.optimizer`` section as a dict: ``{"name": <an OPTIMIZERS name>, "lr": ...}``.
        consistency: pseudo-labels on the unlabelled windows (:mod:`fedaux.model.semi`); None: off.
        contrastive: per contrastive head (``kind`` ``contrastive``), its temperature and views.

    Batches are dicts with ``x`` ``(B, C, packets)`` and a ``(B,)`` target per task; main-task
    labels may be :data:`IGNORE_INDEX` (unlabelled). A contrastive head has no target: its loss
    is NT-Xent between two augmented views of each window. With ``consistency`` the main task's
    loss also holds ``weight`` times the pseudo-label loss of the unlabelled windows. While
    :attr:`pretraining` is set (a pre-training round's fits) the main task's loss is 0 and its
    head is left out of the step. Logged keys: ``train/loss``,
    ``train/loss/<task>``, ``train/weight/<task>``, with consistency ``train/consistency/loss``
    and ``train/consistency/confident`` (the share of unlabelled windows given a pseudo-label),
    ``val/loss``, ``val/acc/<task>``,
    ``val/f1/<task>`` and, for regression heads, ``val/mae/<task>``. Validation batches that carry
    ``flow_index`` ``(B,)`` also give flow-level accuracy, ``val/flow_acc/<task>`` (a flow's class
    is the argmax of its windows' mean softmax), and ``val/min_confidence``: the main-task flow
    probability that 95% of correctly classified held-out flows reach, a threshold below which
    to call a flow ``unknown``.
    """

    def __init__(
        self,
        trunk: nn.Module,
        heads: Mapping[str, nn.Module],
        tasks: Mapping[str, TaskSpec],
        weighting: LossWeighting,
        main_task: str,
        optimizer: Mapping | None = None,
        *,
        consistency: Consistency | None = None,
        contrastive: Mapping[str, ContrastiveViews] | None = None,
    ) -> None:
        super().__init__()
        if set(heads) != set(tasks):
            raise ValueError(f"heads {sorted(heads)} and task specs {sorted(tasks)} must name the same tasks")
        if main_task not in tasks:
            raise ConfigError(f"model.main_task={main_task!r} has no head; heads: {sorted(tasks)}")
        # The main task first, so index 0 of every loss vector is the main loss.
        order = [main_task] + [t for t in tasks if t != main_task]
        if list(weighting.tasks) != order:
            raise ValueError(f"weighting tasks {weighting.tasks} must follow the task order {order}")
        self.task_names = order
        self.tasks = dict(tasks)
        self.main_task = main_task
        self.trunk = trunk
        self.heads = nn.ModuleDict({name: heads[name] for name in order})
        self.weighting = weighting
        self.optimizer_cfg = dict(optimizer or {"name": "adam", "lr": 1e-3})
        self._losses = {name: LOSSES.get(spec.loss) for name, spec in self.tasks.items() if spec.kind != CONTRASTIVE}
        self.consistency = consistency
        self.contrastive = dict(contrastive or {})
        views_for = sorted(t for t, spec in self.tasks.items() if spec.kind == CONTRASTIVE)
        if sorted(self.contrastive) != views_for:
            raise ValueError(f"contrastive views {sorted(self.contrastive)} must be given for exactly the contrastive "
                             f"heads {views_for}")
        self._pretraining = False
        self._train_sum: torch.Tensor | None = None  # (1 + 2T,) sample-weighted sums this epoch
        self._train_seen = 0
        self._semi_sum: torch.Tensor | None = None  # (3,) consistency loss x windows, confident, unlabelled
        # The last training epoch's means (train/loss, train/loss/<task>, train/weight/<task>, the
        # consistency figures): what a base station reports, with or without a Trainer.
        self.epoch_metrics: dict[str, float] = {}
        self._step_views: dict[tuple[str, str], torch.Tensor] = {}  # the last training step's augmented views
        self.val_metrics = nn.ModuleDict({name: self._metrics(spec) for name, spec in self.tasks.items()
                                          if spec.kind != CONTRASTIVE})
        self._flow_outputs: list[tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []
        # Gradient-based weightings need each task's gradient on the trunk: the module then steps
        # itself (Lightning's manual optimisation) and clips at ``manual_clip_val``.
        self.automatic_optimization = not getattr(weighting, "needs_gradients", False)
        self.manual_clip_val: float | None = None
        self.dp_sgd: DPSGD | None = None  # a fedaux.federated.privacy.DPSGD during a DP-SGD local fit

    @property
    def pretraining(self) -> bool:
        """Whether this fit is a pre-training round's (set by the client runtime): the main task's
        loss is 0 and its head frozen from the first epoch's start."""
        return self._pretraining

    @pretraining.setter
    def pretraining(self, value: bool) -> None:
        self._pretraining = bool(value)
        if not value:  # also after a fit that stopped early: the main head trains again
            self.heads[self.main_task].requires_grad_(True)

    @staticmethod
    def _metrics(spec: TaskSpec) -> MetricCollection:
        if spec.kind == "regression":
            return MetricCollection({"mae": MeanAbsoluteError()})
        n = spec.out_features
        return MetricCollection({
            "acc": MulticlassAccuracy(n, average="micro", ignore_index=IGNORE_INDEX),
            "f1": MulticlassF1Score(n, average="macro", ignore_index=IGNORE_INDEX),
        })

    def _val_metrics(self) -> list[tuple[str, MetricCollection]]:
        """``val_metrics`` as built by :meth:`_metrics` (a ModuleDict types its values as plain modules)."""
        return [(task, cast(MetricCollection, metrics)) for task, metrics in self.val_metrics.items()]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, C, packets)`` -> ``{task: (B, out_features)}``."""
        features = self.trunk(x)
        return {name: head(features) for name, head in self.heads.items()}

    def task_losses(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Outputs per task and the ``(T,)`` vector of task losses (main task first), as evaluation
        sees them: no pseudo-labels, and a contrastive head's two views drawn from ``generator``."""
        outputs = self(batch["x"])
        return outputs, self._stack_losses(outputs, batch, generator)

    def _stack_losses(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
                      generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.stack([self._contrastive_loss(t, batch["x"], generator) if self.tasks[t].kind == CONTRASTIVE
                            else self._losses[t](outputs[t], batch[self.tasks[t].target]) for t in self.task_names])

    def _augment(self, task: str):
        augment = self.contrastive[task].augment
        if augment is None:
            raise RuntimeError(f"the contrastive head {task!r} has no augmentations: build the model with "
                               "build_model(..., features=cfg.data.features) to train or score it")
        return augment

    def _contrastive_loss(self, task: str, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        augment = self._augment(task)
        first, second = self.heads[task](self.trunk(torch.cat([augment(x, generator), augment(x, generator)]))).chunk(2)
        return nt_xent(first, second, temperature=self.contrastive[task].temperature)

    def _draw_views(self, batch: Mapping[str, torch.Tensor]) -> dict[tuple[str, str], torch.Tensor]:
        """A training step's augmented windows, from torch's global generator (seeded per fit):
        a weak and a strong view of each unlabelled window (consistency, outside pre-training) and
        two views of every window per contrastive head."""
        x = batch["x"]
        views = {}
        if self.consistency is not None and not self.pretraining:
            unlabelled = x[batch[self.tasks[self.main_task].target] == IGNORE_INDEX]
            views[("consistency", "weak")] = self.consistency.weak(unlabelled, None)
            views[("consistency", "strong")] = self.consistency.strong(unlabelled, None)
        for task in self.contrastive:
            augment = self._augment(task)
            views[(task, "1")], views[(task, "2")] = augment(x, None), augment(x, None)
        return views

    def _training_losses(self, batch: Mapping[str, torch.Tensor], views: dict[tuple[str, str], torch.Tensor] | None = None
                         ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """One training step's task losses, each its own graph (main task first), the trunk's
        features they all come from and, with consistency, ``(3,)`` figures for the log.

        The batch and every augmented view (:meth:`_draw_views`, or ``views`` to score a step's
        views again) go through the trunk as one batch: BatchNorm sees them together, as in
        FixMatch and SimCLR, and a gradient-based weighting differentiates every loss through
        one features tensor.
        """
        x = batch["x"]
        views = self._draw_views(batch) if views is None else views
        self._step_views = views
        if views:
            features = self.trunk(torch.cat([x, *views.values()]))
            parts = dict(zip([("batch", "x"), *views], features.split([len(x), *(len(v) for v in views.values())])))
        else:
            features = self.trunk(x)
            parts = {("batch", "x"): features}
        own = parts[("batch", "x")]
        # The main task waits during pre-training: no loss and no gradient, so its head stays as it came.
        trained = [t for t in self.task_names if self.tasks[t].kind != CONTRASTIVE
                   and not (self.pretraining and t == self.main_task)]
        outputs = {t: self.heads[t](own) for t in trained}
        losses, stats = [], None
        for t in self.task_names:
            if self.tasks[t].kind == CONTRASTIVE:
                losses.append(nt_xent(self.heads[t](parts[(t, "1")]), self.heads[t](parts[(t, "2")]),
                                      temperature=self.contrastive[t].temperature))
            elif t not in outputs:
                losses.append(torch.zeros((), device=features.device))
            else:
                loss = self._losses[t](outputs[t], batch[self.tasks[t].target])
                if t == self.main_task and ("consistency", "weak") in parts and self.consistency is not None:
                    head = self.heads[t]
                    unlabelled, confident = pseudo_label_loss(head(parts[("consistency", "weak")]),
                                                              head(parts[("consistency", "strong")]),
                                                              self.consistency.threshold)
                    loss = loss + self.consistency.weight * unlabelled
                    stats = torch.stack([unlabelled.detach() * len(x), confident.sum().to(unlabelled),
                                         torch.tensor(float(len(confident)), device=unlabelled.device)])
                losses.append(loss)
        return losses, features, stats

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        if not self.automatic_optimization:
            total, losses, weights, stats = self._gradient_step(batch)
        else:
            task_losses, _, stats = self._training_losses(batch)
            losses = torch.stack(task_losses)
            total, weights = self.weighting(losses)
        self._accumulate(batch, total, losses, weights, stats)
        return total if self.automatic_optimization else None

    def _gradient_step(self, batch: Mapping[str, torch.Tensor]
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One manual step of a gradient-based weighting: per-task gradients on the trunk, aggregated."""
        optimizer = self.optimizers()
        if isinstance(optimizer, list):
            raise TypeError(f"manual optimisation steps one optimizer; configure_optimizers gave {len(optimizer)}")
        optimizer.zero_grad()
        # One graph per task loss (not slices of one stacked tensor): torchjd differentiates each alone.
        task_losses, features, stats = self._training_losses(batch)
        losses = torch.stack([loss.detach() for loss in task_losses])
        shared = [p for p in self.trunk.parameters() if p.requires_grad]
        heads = [[p for p in self.heads[t].parameters() if p.requires_grad] for t in self.task_names]
        if shared and all(heads) and not self.pretraining:
            weighting = self.weighting
            if not isinstance(weighting, GradientWeighting):
                raise TypeError(f"manual optimisation needs a weighting with backward(); {type(weighting).__name__} has none")
            weights = weighting.backward(task_losses, features, shared, heads)
        else:  # part of the model is frozen (FedRep's phases) or waits (the main head in pre-training):
            # each trainable part learns from the plain sum, as the aggregators need every task's gradient
            self.manual_backward(torch.stack(task_losses).sum())
            weights = torch.ones_like(losses)
        optimizer.step()  # runs the callbacks' and this module's on_before_optimizer_step (clipping)
        return (weights * losses).sum(), losses, weights, stats

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if not self.automatic_optimization and self.manual_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.manual_clip_val, gradient_clip_algorithm="norm")

    def on_train_start(self) -> None:
        self.weighting.start_fit()

    def on_train_batch_end(self, outputs, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        # Loss-rate methods (FAMO) compare the batch's losses before and after the step.
        weighting = self.weighting
        if isinstance(weighting, SteppedWeighting):  # has after_step
            buffers = {name: b.clone() for name, b in self.named_buffers()}  # BatchNorm must not see it twice
            with torch.no_grad():  # the same batch and the same augmented views as the step
                losses = torch.stack(self._training_losses(batch, views=self._step_views)[0])
            with torch.no_grad():
                for name, b in self.named_buffers():
                    if name in buffers and not name.startswith("weighting."):
                        b.copy_(buffers[name])
            weighting.after_step(losses)
        self._step_views = {}

    def _accumulate(self, batch: Mapping[str, torch.Tensor], total: torch.Tensor, losses: torch.Tensor,
                    weights: torch.Tensor, semi: torch.Tensor | None = None) -> None:
        # Epoch means are accumulated here and logged once per epoch: calling self.log for 1 + 2T
        # keys every step costs more than the step itself for this small model (profiled).
        size = batch["x"].shape[0]
        step_stats = torch.cat([total.detach().reshape(1), losses.detach(), weights.detach()]) * size
        self._train_sum = step_stats if self._train_sum is None else self._train_sum + step_stats
        self._train_seen += size
        if semi is not None:
            self._semi_sum = semi if self._semi_sum is None else self._semi_sum + semi

    def on_train_epoch_start(self) -> None:
        self._train_sum, self._train_seen, self._semi_sum = None, 0, None
        self.epoch_metrics = {}
        if self.pretraining:  # after the callbacks' hooks (FedRep's freezing): the main head waits
            # frozen, so no optimiser (nor DP-SGD's per-sample clipping) counts it as trained
            self.heads[self.main_task].requires_grad_(False)

    def on_train_epoch_end(self) -> None:
        self.weighting.on_epoch_end()
        if self._train_sum is None:
            return
        means = (self._train_sum / self._train_seen).tolist()
        tasks = self.task_names
        keys = ["train/loss", *(f"train/loss/{t}" for t in tasks), *(f"train/weight/{t}" for t in tasks)]
        metrics = dict(zip(keys, means))
        if self._semi_sum is not None:
            loss, confident, unlabelled = self._semi_sum.tolist()
            metrics.update({"train/consistency/loss": loss / self._train_seen,
                            "train/consistency/confident": confident / max(unlabelled, 1.0)})
        self.epoch_metrics = metrics
        if self._trainer is not None:  # a fit without a Trainer (fedaux.federated.fit_loop) reads epoch_metrics
            self.log_dict(metrics, on_step=False, on_epoch=True)

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        # A contrastive head's validation views are seeded by the batch: val/loss is a number of the model alone.
        generator = torch.Generator(batch["x"].device).manual_seed(batch_idx) if self.contrastive else None
        outputs, losses = self.task_losses(batch, generator)
        total, _ = self.weighting(losses)
        self.log("val/loss", total, on_step=False, on_epoch=True, batch_size=batch["x"].shape[0])
        for task, metrics in self._val_metrics():
            output, target = outputs[task], batch[self.tasks[task].target]
            if self.tasks[task].kind == "regression":
                output, target = output.squeeze(-1), target.to(output.dtype)
            metrics.update(output, target)
        if FLOW_KEY in batch:
            classified = [t for t in self.task_names if self.tasks[t].kind == "classification"]
            self._flow_outputs.append((
                batch[FLOW_KEY],
                {t: torch.softmax(outputs[t].detach(), dim=-1).cpu() for t in classified},
                {t: batch[self.tasks[t].target].cpu() for t in classified},
            ))

    def on_validation_epoch_end(self) -> None:
        for task, metrics in self._val_metrics():
            for name, value in metrics.compute().items():
                self.log(f"val/{name}/{task}", value)
            metrics.reset()
        if self._flow_outputs:
            for key, value in self._flow_metrics().items():
                self.log(key, value)
            self._flow_outputs = []

    def _flow_metrics(self) -> dict[str, float]:
        flows = torch.cat([f for f, _, _ in self._flow_outputs]).cpu()
        _, flow_of = torch.unique(flows, return_inverse=True)
        count = int(flow_of.max()) + 1
        metrics = {}
        for task in self._flow_outputs[0][1]:
            probs = torch.cat([p[task] for _, p, _ in self._flow_outputs])
            labels = torch.cat([y[task] for _, _, y in self._flow_outputs])
            mean = flow_means(probs, flow_of, count)
            flow_label = torch.full((count,), IGNORE_INDEX, dtype=labels.dtype).scatter_(0, flow_of, labels)
            known = flow_label != IGNORE_INDEX
            confidence, predicted = mean.max(dim=1)
            correct = (predicted == flow_label) & known
            metrics[f"val/flow_acc/{task}"] = float(correct.sum() / known.sum().clamp_min(1))
            if task == self.main_task and correct.any():
                metrics["val/min_confidence"] = float(torch.quantile(confidence[correct], 0.05))
        return metrics

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = build_optimizer(self.parameters(), self.optimizer_cfg)
        if self.dp_sgd is not None:  # per-sample clipping and noise through Opacus
            # Lightning sets Trainer.datamodule at fit time without declaring it on the class.
            datamodule = self.trainer.datamodule  # type: ignore[attr-defined]
            optimizer = self.dp_sgd.make_private(self, optimizer, datamodule.train_dataloader())
        return optimizer
