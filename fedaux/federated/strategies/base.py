"""The interface every federated strategy implements, and the registry that names them.

A strategy decides four things, on both engines alike:

* what goes down to a base station (:meth:`Strategy.downlink`) and what comes back up
  (:meth:`Strategy.client_upload`): the whole model, the trunk only, or the model plus control
  variates. Both are ``dict[str, Tensor]`` by name, so the two-tier aggregator, the byte counters
  and Flower's ``ArrayRecord`` carry them unchanged.
* how a base station trains (:meth:`Strategy.client_callbacks`, :meth:`Strategy.local_epochs`):
  Lightning callbacks that touch gradients or freeze parts of the model;
* what a base station keeps between rounds (its *local state*: personal heads, control
  variates), under the ``strategy`` namespace of the base station's local state: the server's
  checkpoint keeps it on the in-process engines, each node's own folder on Flower;
* how the top tier turns the average of the edge servers into the next global model
  (:meth:`Strategy.server_update`): plain replacement (FedAvg) or a server optimiser step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import lightning as L
import torch

from fedaux.federated.aggregation import cpu_state, load_state
from fedaux.registry import Registry

State = dict[str, torch.Tensor]

# A strategy class by name (``federated.strategy``); each module of this package registers one or two.
STRATEGIES: Registry[type[Strategy]] = Registry("federated strategy", "federated.strategy")


class Strategy:
    """Base class and FedAvg's behaviour: send the whole model, average it, take the average.

    Args:
        param_names: names of the model's trainable parameters (the rest of the state dict are
            buffers such as BatchNorm statistics), in ``named_parameters()`` order.
        fed_cfg: the ``federated`` config section (strategies read their options from it).
    """

    personalised: ClassVar[bool] = False  # clients keep part of the model: scored on their own models too

    def __init__(self, param_names: Sequence[str], fed_cfg: Any = None) -> None:
        self.param_names = list(param_names)
        # State-dict entries every base station keeps to itself whatever the strategy
        # (federated.batchnorm=local: BatchNorm statistics, FedBN): never sent either way.
        self.local_keys: frozenset[str] = frozenset()

    @property
    def scores_own_models(self) -> bool:
        """Whether base stations keep part of the model (a personalised strategy, or local
        statistics), so their own models are scored (``personal/*``) and head the record."""
        return self.personalised or bool(self.local_keys)

    @classmethod
    def from_config(cls, fed_cfg: Any, param_names: Sequence[str]) -> Strategy:
        return cls(param_names, fed_cfg)

    # ------------------------------------------------------------------ server side
    def downlink(self, global_state: Mapping[str, torch.Tensor]) -> State:
        """What every selected base station receives this round."""
        return dict(global_state)

    def server_update(self, global_state: Mapping[str, torch.Tensor], aggregate: Mapping[str, torch.Tensor],
                      participants: int, clients: int) -> State:
        """The next global state from the current one and the two-tier average of the uploads.

        Args:
            participants: base stations whose update was aggregated this round.
            clients: base stations in the federation.
        """
        return {**global_state, **{k: v for k, v in aggregate.items() if k in global_state}}

    def state_dict(self) -> dict[str, Any]:
        """Server-side state a resumed run needs (momentum, control variate, ...)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    # ------------------------------------------------------------------ client side
    def local_epochs(self, configured: int) -> int:
        """Epochs of a base station's local fit (``federated.local_epochs`` unless the method adds some)."""
        return configured

    def load_client(self, model: torch.nn.Module, payload: Mapping[str, torch.Tensor],
                    local_state: Mapping[str, torch.Tensor], initial_state: Mapping[str, torch.Tensor]) -> None:
        """Put the model a base station starts its fit from into ``model``.

        Model entries missing from the payload come from ``local_state``, or on a base station's
        first round from ``initial_state`` (the model's seeded initial weights, equal everywhere).
        """
        model_keys = initial_state.keys()
        state = {k: initial_state[k] for k in model_keys}
        state.update({k: v for k, v in local_state.items() if k in model_keys})
        state.update({k: v for k, v in payload.items() if k in model_keys})
        load_state(model, state)

    def client_callbacks(self, model: torch.nn.Module, payload: Mapping[str, torch.Tensor],
                         local_state: Mapping[str, torch.Tensor]) -> list[L.Callback]:
        """Lightning callbacks for this base station's fit (gradient corrections, freezing)."""
        return []

    def client_upload(self, model: torch.nn.Module, payload: Mapping[str, torch.Tensor],
                      local_state: Mapping[str, torch.Tensor], callbacks: Sequence[L.Callback]) -> tuple[State, State]:
        """``(upload, new local state)`` after the fit; the upload has the payload's keys."""
        state = cpu_state(model)
        return {k: state[k] for k in payload}, {}

    def headline_key(self, main_task: str) -> str:
        """The record key whose value is the method's main-task accuracy (rounds to target, plots):
        the global model's, or the base stations' own where they keep statistics local (the global
        model's BatchNorm statistics then stay at their initial values)."""
        return f"personal/acc/{main_task}" if self.local_keys else f"val/acc/{main_task}"



def batchnorm_statistics(model: torch.nn.Module) -> list[str]:
    """State-dict keys of the model's BatchNorm running statistics (``running_mean``,
    ``running_var``, ``num_batches_tracked``): what ``federated.batchnorm=local`` keeps on the base
    stations."""
    from torch.nn.modules.batchnorm import _NormBase

    keys = []
    for prefix, module in model.named_modules():
        if isinstance(module, _NormBase) and module.track_running_stats:
            keys += [f"{prefix}.{name}" if prefix else name for name, _ in module.named_buffers(recurse=False)]
    return keys


class ParameterGradientHook(L.Callback):
    """Adds a per-parameter term to the gradients before every optimiser step (after backward,
    before Lightning clips), counting the steps. FedProx and SCAFFOLD subclass it."""

    direct_fit_safe = True  # reads nothing of the Trainer (fedaux.federated.fit_loop)

    def __init__(self) -> None:
        self.steps = 0

    def correction(self, name: str, param: torch.Tensor) -> torch.Tensor | None:
        raise NotImplementedError

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        self.steps += 1
        with torch.no_grad():
            for name, param in pl_module.named_parameters():
                if param.grad is None:
                    continue
                term = self.correction(name, param)
                if term is not None:
                    param.grad.add_(term.to(param.grad.device, param.grad.dtype))
