"""User callbacks, loaded by import path from ``logging.callbacks``."""

import lightning as L

from fedaux.federated.hooks import RoundCallback


class HookRecorder(RoundCallback):
    """Records every round hook it receives, with the round (or client) it was called for."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_run_start(self, orchestrator):
        self.calls.append(("on_run_start",))

    def on_round_start(self, orchestrator, rnd, clients):
        self.calls.append(("on_round_start", rnd))

    def on_client_start(self, orchestrator, rnd, client):
        self.calls.append(("on_client_start", rnd, client))

    def on_client_done(self, orchestrator, rnd, update):
        self.calls.append(("on_client_done", rnd, update.client))

    def on_client_dropped(self, orchestrator, rnd, client, reason):
        self.calls.append(("on_client_dropped", rnd, client))

    def on_aggregated(self, orchestrator, rnd, aggregate):
        self.calls.append(("on_aggregated", rnd))

    def on_evaluated(self, orchestrator, rnd, metrics):
        self.calls.append(("on_evaluated", rnd))

    def log_round(self, orchestrator, rnd, record):
        self.calls.append(("log_round", rnd))
        record["user/hooks_seen"] = len(self.calls)

    def on_round_end(self, orchestrator, rnd, record):
        self.calls.append(("on_round_end", rnd))

    def add_to_summary(self, orchestrator, summary):
        self.calls.append(("add_to_summary",))
        summary["user/hooks_seen"] = len(self.calls)

    def on_run_end(self, orchestrator, summary):
        self.calls.append(("on_run_end",))

    def on_run_teardown(self, orchestrator, failed):
        self.calls.append(("on_run_teardown", failed))


class BaseStationOneFailsInRoundTwo(L.Callback, RoundCallback):
    """Also a Lightning callback: attached to every client Trainer, it fails one real local fit."""

    def on_client_start(self, orchestrator, rnd, client):
        self.round, self.client = rnd, client

    def on_train_start(self, trainer, pl_module):
        if (self.round, self.client) == (2, 1):
            raise RuntimeError("radio link lost")


class BrokenCallback(RoundCallback):
    """A bug inside a plug-in: must surface with its traceback, not as a one-line user error."""

    def on_round_start(self, orchestrator, rnd, clients):
        raise ValueError("a bug in a plug-in")
