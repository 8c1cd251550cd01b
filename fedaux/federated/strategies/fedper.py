"""FedPer (Arivazhagan et al., "Federated Learning with Personalization Layers", 2019): the
task heads stay on each base station; only the shared trunk is sent and averaged.

A base station's heads are local state: initialised from the model's seeded initial weights,
trained in every local fit, never uploaded. The global model's heads therefore stay at their
initial values, so its held-out accuracy (``val/acc/*``) means little; the method is scored by
its base stations' own models (``personal/acc/*`` on the global held-out flows and
``personal/local_acc/*`` on held-out flows weighted to each base station's class mix).
"""

from __future__ import annotations

from fedaux.federated.aggregation import cpu_state
from fedaux.federated.strategies.base import STRATEGIES, State, Strategy

LOCAL_PREFIXES = ("heads.",)  # state-dict entries that stay on the base station


def is_local(key: str) -> bool:
    return key.startswith(LOCAL_PREFIXES)


@STRATEGIES.register("fedper")
class FedPer(Strategy):
    """Trunk averaged, heads personal."""

    personalised = True

    def downlink(self, global_state) -> State:
        return {k: v for k, v in global_state.items() if not is_local(k)}

    def client_upload(self, model, payload, local_state, callbacks) -> tuple[State, State]:
        state = cpu_state(model)
        return {k: state[k] for k in payload}, {k: v for k, v in state.items() if is_local(k)}

    def headline_key(self, main_task: str) -> str:
        return f"personal/acc/{main_task}"
