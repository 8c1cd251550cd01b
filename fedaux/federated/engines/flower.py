"""The Flower engine: the same experiment on Flower's ClientApp / ServerApp (Message API).

* Each base station is a Flower SuperNode running :data:`client_app`. It builds the same
  :class:`~fedaux.federated.runtime.ClientRuntime` as every other engine from the config each
  training message carries, and fits on its partition (simulation: ``partition-id`` from
  Flower) or on its own local flows (deployment: ``data-root`` in its node config). The run's
  Lightning callbacks (``logging.callbacks``) run in every fit, as in process.
* What a base station keeps between rounds (personal heads, control variates, error-feedback
  residuals, the DP-SGD accountant) stays on its node, in a :class:`NodeStateStore` under the
  node's own folder (``state-dir`` in its node config; in simulation a folder per base station
  under the run folder). A resumed run reads it back, so it continues exactly.
* The server is a :class:`FedauxServerStrategy`, a Flower ``Strategy`` that drives the fedaux
  server (:class:`~fedaux.federated.orchestrator.FederatedOrchestrator`) through the same round
  API as every engine: selection, the update pipeline's edge and top stages, the federated
  strategy's server step, evaluation and the round hooks.

State travels as an ``ArrayRecord`` built from the state dict (by name, never by position).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from omegaconf import DictConfig, OmegaConf

from fedaux.errors import ConfigError
from fedaux.federated.engines.base import Engine, timeout_reason
from fedaux.federated.hooks import KeepsTotals, RoundCallback
from fedaux.federated.orchestrator import FederatedOrchestrator
from fedaux.federated.pipeline import LocalState
from fedaux.federated.runtime import ClientFit, flatten_local_state, to_update, unflatten_local_state
from fedaux.plugins import import_plugins
from fedaux.schema import config_from_text
from fedaux.unknown import FeatureSums

log = logging.getLogger(__name__)

NODE_WAIT_S = 300.0  # how long the server waits for every simulated or deployed node to register

ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"
# The record kind under each key is fixed by this module's messages: ARRAYS an ArrayRecord,
# CONFIG a ConfigRecord, METRICS a MetricRecord (hence the casts where a RecordDict is read).


def _scalar(value: object) -> int | float | str:
    """A number (or numeric text) read from a Flower record, for ``int()`` or ``float()``."""
    if not isinstance(value, int | float | str):
        raise TypeError(f"expected a number in the Flower record, got a {type(value).__name__}")
    return value


# ---------------------------------------------------------------------------------------- bytes
def flower_nbytes(obj: Any) -> int:
    """Bytes Flower transfers for a record: every object of its tree as Flower serialises it.

    Flower 1.x sends a message as a tree of content-addressed objects (the RecordDict, each record,
    each Array); this sums ``deflate()`` over that tree, i.e. the payload before gRPC framing.
    """
    children = getattr(obj, "children", None) or {}
    return len(obj.deflate()) + sum(flower_nbytes(child) for child in children.values())


def to_record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord.from_torch_state_dict(state)


def from_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    # Flower's arrays may be read-only views of the message buffer; copy into owned tensors.
    return {k: torch.from_numpy(v.numpy().copy()) for k, v in record.items()}


# ---------------------------------------------------------------------------------------- node state
class NodeStateStore:
    """A base station's local state on its node's disk: one file per round it took part in.

    :meth:`load_before` reads the newest file of an earlier round, so a round that is rerun after
    an interruption (the node saved it, the server never completed it) starts from the state the
    uninterrupted run started from. The two newest files are kept.

    Args:
        folder: the node's own folder (created when first written).
    """

    KEEP = 2

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def _files(self) -> list[tuple[int, Path]]:
        if not self.folder.is_dir():
            return []
        found = []
        for path in self.folder.glob("local-state-r*.pt"):
            digits = path.stem.removeprefix("local-state-r")
            if digits.isdigit():
                found.append((int(digits), path))
        return sorted(found)

    def load_before(self, rnd: int) -> LocalState:
        """The local state saved by the newest round before ``rnd`` (empty if none)."""
        earlier = [path for r, path in self._files() if r < rnd]
        if not earlier:
            return {}
        return unflatten_local_state(torch.load(earlier[-1], weights_only=True))

    def save(self, rnd: int, state: LocalState) -> None:
        """Write round ``rnd``'s state (atomically: a killed node leaves the previous file whole)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"local-state-r{rnd:06d}.pt"
        partial = path.with_suffix(".partial")
        torch.save(flatten_local_state(state), partial)
        os.replace(partial, path)
        for _, old in self._files()[:-self.KEEP]:
            old.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------- client side
@lru_cache(maxsize=2)
def _experiment(yaml_text: str) -> DictConfig:
    """The experiment config a message carries, with its plug-ins imported in this process (once)."""
    cfg = config_from_text(yaml_text)
    import_plugins(list(cfg.plugins))
    return cfg


@lru_cache(maxsize=2)
def _simulated_data(yaml_text: str) -> Any:
    """The whole federation's data, built once per worker process (simulation only)."""
    from fedaux.data.samples import build_federated_data

    cfg = _experiment(yaml_text)
    return build_federated_data(cfg.data, cfg.federated.base_stations, cfg.federated.edge_servers, cfg.seed,
                                main_target=cfg.model.heads[cfg.model.main_task].target)


@lru_cache(maxsize=4)
def _local_samples(yaml_text: str, data_root: str, client: int, class_names: tuple[str, ...]) -> Any:
    from fedaux.data.samples import local_client_samples

    cfg = OmegaConf.merge(_experiment(yaml_text), {"data": {"root": data_root}})
    if not isinstance(cfg, DictConfig):  # merged onto the experiment's DictConfig, it stays one
        raise ConfigError(f"the server's experiment config with data-root {data_root!r} is not a mapping")
    return local_client_samples(cfg.data, cfg.seed, client, class_names,
                                main_target=cfg.model.heads[cfg.model.main_task].target)


@lru_cache(maxsize=2)
def _runtime(yaml_text: str, target_classes_json: str, simulated: bool) -> Any:
    """The node's runtime, built from the config like every engine's, with the run's Lightning
    callbacks (``logging.callbacks``); plus the downlink decoder."""
    from fedaux.federated.compression import Compression
    from fedaux.federated.hooks import lightning_callbacks_from_config
    from fedaux.federated.runtime import ClientRuntime

    cfg = _experiment(yaml_text)
    test = _simulated_data(yaml_text).test if simulated else None
    runtime = ClientRuntime.from_config(cfg, json.loads(target_classes_json), test=test,
                                        callbacks=lightning_callbacks_from_config(cfg))
    return runtime, Compression.from_config(cfg.federated.compression, runtime.model)


def _client_identity(context: Context) -> tuple[int, str | None]:
    """(base station index, local data root or None). Simulation numbers nodes by ``partition-id``;
    a deployed SuperNode states ``base-station`` and ``data-root`` in its ``--node-config``."""
    node = context.node_config
    if "data-root" in node:
        return int(node.get("base-station", node.get("partition-id", 0))), str(node["data-root"])
    return int(node["partition-id"]), None


def _samples_for(context: Context, config: ConfigRecord) -> tuple[int, Any]:
    yaml_text = str(config["experiment"])
    client, data_root = _client_identity(context)
    if data_root is None:
        return client, _simulated_data(yaml_text).clients[client]
    classes = tuple(json.loads(str(config["class-names"])))
    return client, _local_samples(yaml_text, data_root, client, classes)


LOCAL_STATE = "fedaux-local"  # Context.state record of a node with no folder of its own (not resumable)


def node_state_store(context: Context, config: ConfigRecord, client: int) -> NodeStateStore | None:
    """Where this node keeps its base station's local state: ``state-dir`` from its node config, or
    (simulation) ``<state-root>/base_station-<k>`` from the server; None: only in ``Context.state``."""
    node = context.node_config
    if "state-dir" in node:
        return NodeStateStore(str(node["state-dir"]))
    root = str(config.get("state-root", ""))
    return NodeStateStore(Path(root) / f"base_station-{client}") if root else None


client_app = ClientApp()


@client_app.query()
def identify(msg: Message, context: Context) -> Message:
    """Tell the server which base station this node is and how many samples it holds."""
    client, samples = _samples_for(context, cast(ConfigRecord, msg.content[CONFIG]))
    reply = RecordDict({METRICS: MetricRecord({"client": client, "num-examples": len(samples)})})
    return Message(content=reply, reply_to=msg)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training: the runtime's fit from the global arrays, the upload sent back, the local state kept."""
    config = cast(ConfigRecord, msg.content[CONFIG])
    yaml_text = str(config["experiment"])
    if int(_scalar(config.get("torch-threads", 0))) > 0:
        torch.set_num_threads(int(_scalar(config["torch-threads"])))
    client, samples = _samples_for(context, config)
    simulated = _client_identity(context)[1] is None
    runtime, compression = _runtime(yaml_text, str(config["target-classes"]), simulated)
    rnd = int(_scalar(config["server-round"]))
    store = node_state_store(context, config, client)
    if store is not None:
        local_state = store.load_before(rnd)
    else:
        local_state = (unflatten_local_state(from_record(cast(ArrayRecord, context.state[LOCAL_STATE])))
                       if LOCAL_STATE in context.state else {})
    downlink = from_record(cast(ArrayRecord, msg.content[ARRAYS]))
    fit = runtime.fit(client, samples, compression.receive_down(downlink), rnd, local_state)
    if store is not None:
        store.save(rnd, fit.local_state)
    elif fit.local_state:
        context.state[LOCAL_STATE] = to_record(flatten_local_state(fit.local_state))
    metrics = MetricRecord({"client": client, "num-examples": fit.num_samples, "fit_seconds": fit.seconds,
                            "loop_seconds": fit.loop_seconds, **fit.metrics})
    return Message(content=RecordDict({ARRAYS: to_record(fit.upload), METRICS: metrics}), reply_to=msg)


FEATURE_SUMS = "feature_sums"  # the query action of the statistics pass (message type "query.feature_sums")


@client_app.query(FEATURE_SUMS)
def feature_sums(msg: Message, context: Context) -> Message:
    """The statistics pass after the last round: this base station's feature sums under the final
    global model the message carries (:meth:`~fedaux.federated.runtime.ClientRuntime.feature_sums`);
    only the sums go back."""
    config = cast(ConfigRecord, msg.content[CONFIG])
    if int(_scalar(config.get("torch-threads", 0))) > 0:
        torch.set_num_threads(int(_scalar(config["torch-threads"])))
    client, samples = _samples_for(context, config)
    runtime, _ = _runtime(str(config["experiment"]), str(config["target-classes"]), _client_identity(context)[1] is None)
    sums = runtime.feature_sums(samples, from_record(cast(ArrayRecord, msg.content[ARRAYS])))
    reply = RecordDict({ARRAYS: to_record(sums.state_dict()), METRICS: MetricRecord({"client": client})})
    return Message(content=reply, reply_to=msg)


def fit_from_reply(content: RecordDict) -> ClientFit:
    """The :class:`ClientFit` a node's reply carries (its local state stayed on the node)."""
    metrics = dict(cast(MetricRecord, content[METRICS]))
    client, samples = int(_scalar(metrics.pop("client"))), int(_scalar(metrics.pop("num-examples")))
    seconds, loop = float(_scalar(metrics.pop("fit_seconds"))), float(_scalar(metrics.pop("loop_seconds", 0.0)))
    return ClientFit(client, from_record(cast(ArrayRecord, content[ARRAYS])), {}, samples,
                     {k: float(_scalar(v)) for k, v in metrics.items()}, seconds, loop)


# ---------------------------------------------------------------------------------------- server side
class FlowerTraffic(KeepsTotals, RoundCallback):
    """Adds the bytes Flower actually carried between server and base stations to each round record:
    ``comm/flower_bytes_down`` and ``comm/flower_bytes_up`` (serialised records, see :func:`flower_nbytes`)."""

    def __init__(self) -> None:
        self.down = self.up = 0
        self._totals = {"down": 0, "up": 0}

    def log_round(self, orchestrator, rnd: int, record: dict[str, Any]) -> None:
        self._totals["down"] += self.down
        self._totals["up"] += self.up
        record["comm/flower_bytes_down"] = self.down
        record["comm/flower_bytes_up"] = self.up
        self.down = self.up = 0


class FedauxServerStrategy(Strategy):
    """A Flower strategy that drives the fedaux server: selection, the update pipeline's edge and
    top stages, the federated strategy's server step (any of them), evaluation and the hooks.

    Args:
        orchestrator: the fedaux server. Client selection uses the same seeded draw as every engine.
        experiment_yaml: the resolved experiment config sent to every base station.
        traffic: counts what Flower sends; it must also be among the orchestrator's callbacks.
        state_root: simulation only: the folder under which each node keeps its local state.
        first_round: the fedaux round of Flower's round 1 (``completed_rounds + 1`` when resuming):
            fedaux numbers rounds ``first_round - 1 + server_round`` in its records, seeds and hooks.
    """

    def __init__(self, orchestrator: FederatedOrchestrator, experiment_yaml: str, traffic: FlowerTraffic,
                 torch_threads: int = 0, first_round: int = 1, state_root: str = "", timeout_s: float = 3600) -> None:
        self.orchestrator = orchestrator
        self.traffic = traffic
        self.round_offset = first_round - 1
        self.timeout_s = timeout_s
        data = orchestrator.data
        self.base_config: dict[str, str | int] = {
            "experiment": experiment_yaml,
            "target-classes": json.dumps({n: t.num_classes for n, t in data.targets.items()}),
            "class-names": json.dumps(list(data.flows.class_names)),
            "torch-threads": torch_threads,
            "state-root": state_root,
        }
        self.node_of_client: dict[int, int] = {}
        self._selected: list[int] = []

    def summary(self) -> None:
        log.info("FedauxServerStrategy: %d base stations under %d edge servers", len(self.orchestrator.data.clients),
                 int(self.orchestrator.data.partition.edge_of_client.max()) + 1)

    def _identify_nodes(self, grid: Grid) -> None:
        """Ask every node which base station it is (node ids are assigned by Flower). Nodes
        register one by one (with 1,000 simulated base stations, 414 had when the first round
        started on the 2-core VM), so this waits, up to :data:`NODE_WAIT_S`, until there are as
        many as base stations."""
        expected = len(self.orchestrator.data.clients)
        deadline = time.monotonic() + NODE_WAIT_S
        node_ids = list(grid.get_node_ids())
        while len(node_ids) < expected and time.monotonic() < deadline:
            time.sleep(0.5)
            node_ids = list(grid.get_node_ids())
        messages = [Message(content=RecordDict({CONFIG: ConfigRecord(dict(self.base_config))}),
                            message_type=MessageType.QUERY, dst_node_id=n) for n in node_ids]
        for reply in grid.send_and_receive(messages):
            if reply.has_error():
                raise RuntimeError(f"node {reply.metadata.src_node_id} failed to identify itself: {reply.error.reason}")
            client = int(_scalar(cast(MetricRecord, reply.content[METRICS])["client"]))
            self.node_of_client[client] = reply.metadata.src_node_id
        missing = sorted(set(range(len(self.orchestrator.data.clients))) - set(self.node_of_client))
        if missing:
            raise RuntimeError(f"no Flower node serves base stations {missing}; {len(node_ids)} node(s) connected")

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        if not self.node_of_client:
            self._identify_nodes(grid)
        rnd = self.round_offset + server_round
        clients = self.orchestrator.start_round(rnd)
        self._selected = list(clients)
        # The strategy's payload (the whole model, the trunk only, or the model and control
        # variates), as encoded by the downlink codec.
        arrays = to_record(self.orchestrator.downlink_wire)
        record = RecordDict({ARRAYS: arrays, CONFIG: ConfigRecord({**self.base_config, "server-round": rnd})})
        self.traffic.down = flower_nbytes(record) * len(clients)
        for client in clients:
            self.orchestrator.client_started(rnd, client)
        return [Message(content=record, message_type=MessageType.TRAIN, dst_node_id=self.node_of_client[c])
                for c in clients]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rnd = self.round_offset + server_round
        updates, answered = [], set()
        client_of_node = {node: client for client, node in self.node_of_client.items()}
        for reply in replies:
            client = client_of_node.get(reply.metadata.src_node_id, -1)
            answered.add(client)
            if reply.has_error():
                self.orchestrator.drop(rnd, client, f"failed on its node: {reply.error.reason}")
                continue
            self.traffic.up += flower_nbytes(reply.content)
            updates.append(to_update(fit_from_reply(reply.content), self.orchestrator.data.partition.edge_of_client,
                                     state_stays_on_node=True))
        for client in sorted(set(self._selected) - answered):
            self.orchestrator.drop(rnd, client, timeout_reason(self.timeout_s, "no reply to Flower"))
        # Replies arrive in any order; fold them in base-station order so both engines sum alike.
        for update in sorted(updates, key=lambda u: u.client):
            self.orchestrator.receive(rnd, update)
        record = self.orchestrator.finish_round(rnd)
        main = f"val/acc/{self.orchestrator.model.main_task}"
        return to_record(self.orchestrator.global_state), MetricRecord({"accuracy": float(record[main])})

    def feature_sums(self, grid: Grid, state: dict[str, torch.Tensor]) -> Iterator[tuple[int, FeatureSums | str]]:
        """The statistics pass: the final global ``state`` to every base station's node, its
        :class:`~fedaux.unknown.FeatureSums` back (in base-station order), or why it has none."""
        if not self.node_of_client:
            self._identify_nodes(grid)
        record = RecordDict({ARRAYS: to_record(state), CONFIG: ConfigRecord(dict(self.base_config))})
        clients = sorted(self.node_of_client)
        messages = [Message(content=record, message_type=f"{MessageType.QUERY}.{FEATURE_SUMS}",
                            dst_node_id=self.node_of_client[c]) for c in clients]
        client_of_node = {node: client for client, node in self.node_of_client.items()}
        outcome: dict[int, FeatureSums | str] = {}
        for reply in grid.send_and_receive(messages, timeout=self.timeout_s):
            client = client_of_node.get(reply.metadata.src_node_id, -1)
            if reply.has_error():
                outcome[client] = f"failed on its node: {reply.error.reason}"
                continue
            try:
                outcome[client] = FeatureSums.from_state_dict(from_record(cast(ArrayRecord, reply.content[ARRAYS])))
            except (KeyError, ValueError) as err:
                outcome[client] = f"sent malformed feature sums: {err}"
        for client in clients:
            yield client, outcome.get(client, timeout_reason(self.timeout_s, "no reply to Flower"))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return []  # the server evaluates the global model on the held-out flows in aggregate_train

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None


def flower_driver(grid: Grid, experiment_yaml: str, traffic: FlowerTraffic, torch_threads: int = 0,
                  timeout_s: float = 3600, state_root: str = "") -> Any:
    """A ``drive`` for :meth:`FederatedOrchestrator.run` that lets a Flower strategy run the rounds
    the orchestrator has not completed yet (all of them, or the rest of a resumed run)."""

    def drive(orchestrator: FederatedOrchestrator) -> None:
        if traffic not in orchestrator.callbacks:
            raise ValueError("the FlowerTraffic counter must be among the orchestrator's callbacks (FlowerEngine.callbacks)")
        remaining = orchestrator.rounds_to_run()  # fewer than left when the privacy budget ends the run
        strategy = FedauxServerStrategy(orchestrator, experiment_yaml, traffic, torch_threads,
                                        first_round=orchestrator.completed_rounds + 1, state_root=state_root,
                                        timeout_s=timeout_s)
        if remaining > 0:
            strategy.start(grid, to_record(orchestrator.global_state), num_rounds=remaining, timeout=timeout_s)
        orchestrator.sum_features(lambda state: strategy.feature_sums(grid, state))

    return drive


class FlowerEngine(Engine):
    """The experiment on Flower: on a deployment's ``grid`` (inside a ServerApp), or, with no grid,
    on Flower's simulation engine (Ray) on this machine with one SuperNode per base station."""

    def __init__(self, cfg: DictConfig, grid: Grid | None = None, run_dir: str | Path | None = None) -> None:
        self.cfg, self.grid = cfg, grid
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.traffic = FlowerTraffic()
        self.experiment_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        flower = cfg.federated.flower
        self.timeout_s = cfg.federated.client_timeout_s or flower.timeout_s

    def callbacks(self) -> list[RoundCallback]:
        return [self.traffic]

    def driver(self, grid: Grid) -> Any:
        # Simulated nodes share this machine: each keeps its state in a folder of the run's.
        root = str(Path(self.run_dir) / "nodes") if self.grid is None and self.run_dir is not None else ""
        return flower_driver(grid, self.experiment_yaml, self.traffic, self.cfg.federated.flower.torch_threads,
                             self.timeout_s, root)

    def run(self, orchestrator: FederatedOrchestrator) -> dict[str, Any]:
        if self.grid is not None:
            return orchestrator.run(self.driver(self.grid))
        return self._simulate(orchestrator)

    def _simulate(self, orchestrator: FederatedOrchestrator) -> dict[str, Any]:
        from flwr.simulation import run_simulation as flower_run_simulation

        flower = self.cfg.federated.flower
        if not flower.verbose:
            logging.getLogger("flwr").setLevel(logging.WARNING)
        server_app = ServerApp()

        @server_app.main()
        def main(grid: Grid, context: Context) -> None:
            orchestrator.run(self.driver(grid))

        backend_config = {
            "client_resources": {"num_cpus": flower.num_cpus, "num_gpus": 0.0},
            "init_args": {"num_cpus": flower.max_workers or os.cpu_count(), "include_dashboard": False,
                          "logging_level": "error", "log_to_driver": False},
        }
        flower_run_simulation(server_app=server_app, client_app=client_app,
                              num_supernodes=self.cfg.federated.base_stations,
                              backend_config=backend_config, verbose_logging=flower.verbose)
        if orchestrator.summary is None:
            raise RuntimeError(
                f"the Flower simulation stopped after {orchestrator.completed_rounds} of {orchestrator.rounds} rounds; "
                "rerun with federated.flower.verbose=true to see Flower's log"
            )
        return orchestrator.summary
