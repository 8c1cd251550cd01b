"""SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020).

The server holds a control variate ``c`` and each base station its own ``c_i`` (local state,
zero at first). Both travel as extra ``control/<parameter>`` entries next to the model, so the
bytes they add are counted like any other. Every local step uses the corrected gradient
``g + c - c_i``. After the fit the base station sets ``c_i+`` to the mean of the raw minibatch
gradients ``g`` of its local steps and uploads its model ``y_i`` and ``delta c_i = c_i+ - c_i``.
The edge servers and the top level average both by samples, and the server moves
``c <- c + |S| / N * mean(delta c_i)`` (``|S|`` base stations this round out of ``N``); with every
base station in every round, ``c`` stays the sample-weighted mean of the ``c_i``. The model is
averaged as in FedAvg (global learning rate 1).

For SGD clients the mean raw gradient is exactly the paper's option II,
``c_i - c + (x - y_i) / (K lr)`` (substitute ``y_i = x - lr sum_k (g_k + c - c_i)``). fedaux's
clients use Adam, whose steps are not ``lr`` times the gradient: there option II would put
``c_i`` in units of Adam steps (order 1 per coordinate) rather than gradients, and the
correction swamps the gradients (a run of it fell to 0.40 accuracy); the mean raw gradient keeps
the control variates in gradient units whatever the optimiser.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch

from fedaux.federated.aggregation import cpu_state
from fedaux.federated.strategies.base import STRATEGIES, ParameterGradientHook, State, Strategy

CONTROL = "control/"  # prefix of control-variate entries in payloads, uploads and local state


class ControlCorrection(ParameterGradientHook):
    """Adds ``c - c_i`` to each parameter's gradient before every optimiser step, after adding the
    raw gradient to a running sum (``c_i+`` is its mean over the fit's steps)."""

    def __init__(self, correction_terms: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.terms = correction_terms
        self.gradient_sums: dict[str, torch.Tensor] = {}

    def correction(self, name: str, param: torch.Tensor) -> torch.Tensor | None:
        if param.grad is None:  # ParameterGradientHook skips parameters without a gradient
            raise RuntimeError(f"SCAFFOLD correction asked for {name!r}, which has no gradient")
        raw = param.grad.detach().to("cpu", torch.float32)
        self.gradient_sums[name] = raw.clone() if name not in self.gradient_sums else self.gradient_sums[name].add_(raw)
        return self.terms.get(name)


@STRATEGIES.register("scaffold")
class Scaffold(Strategy):
    """Control variates against client drift; ``control/*`` entries double the bytes each way."""

    def __init__(self, param_names: Sequence[str], fed_cfg: Any = None) -> None:
        super().__init__(param_names, fed_cfg)
        self.control: State = {}  # the server's c, by parameter name

    def _server_control(self, global_state: Mapping[str, torch.Tensor]) -> State:
        if not self.control:
            self.control = {k: torch.zeros_like(global_state[k]) for k in self.param_names}
        return self.control

    def downlink(self, global_state) -> State:
        control = self._server_control(global_state)
        return {**global_state, **{CONTROL + k: v for k, v in control.items()}}

    def server_update(self, global_state, aggregate, participants: int, clients: int) -> State:
        control = self._server_control(global_state)
        share = participants / clients
        self.control = {k: c + share * aggregate[CONTROL + k] for k, c in control.items()}
        return super().server_update(global_state, aggregate, participants, clients)

    def state_dict(self) -> dict[str, Any]:
        return {"control": dict(self.control)}

    def load_state_dict(self, state) -> None:
        self.control = {k: v.detach().to("cpu") for k, v in state.get("control", {}).items()}

    # ------------------------------------------------------------------ client side
    def _client_control(self, payload, local_state) -> State:
        return {k: local_state.get(CONTROL + k, torch.zeros_like(payload[CONTROL + k])) for k in self.param_names}

    def client_callbacks(self, model, payload, local_state) -> list[L.Callback]:
        mine = self._client_control(payload, local_state)
        return [ControlCorrection({k: payload[CONTROL + k] - mine[k] for k in self.param_names})]

    def client_upload(self, model, payload, local_state, callbacks) -> tuple[State, State]:
        state = cpu_state(model)
        hook = next(c for c in callbacks if isinstance(c, ControlCorrection))
        mine = self._client_control(payload, local_state)
        new: State = {}
        for k in self.param_names:
            if hook.steps == 0 or k not in hook.gradient_sums:  # no step (or a frozen parameter): keep c_i
                new[k] = mine[k].clone()
            else:
                new[k] = (hook.gradient_sums[k] / hook.steps).to(mine[k].dtype)
        upload = {k: state[k] for k in payload if not k.startswith(CONTROL)}
        upload.update({CONTROL + k: new[k] - mine[k] for k in self.param_names})
        return upload, {CONTROL + k: v for k, v in new.items()}
