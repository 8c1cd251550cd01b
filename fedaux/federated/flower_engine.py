"""The Flower engine: the same experiment on Flower's ClientApp / ServerApp (Message API).

* Each base station is a Flower SuperNode running :data:`client_app`. It trains with the same
  Lightning code as the in-process engine (:func:`fedaux.federated.client.train_client`), on its
  partition (simulation: ``partition-id`` from Flower) or on its own local flows (deployment:
  ``data-root`` in its node config).
* The server is a :class:`TwoTierFedAvgStrategy`, a Flower ``Strategy`` that hands every reply to
  the fedaux orchestrator: two-tier FedAvg by parameter name, evaluation of the global model on the
  held-out flows, and the same round hooks, so bytes, time, W&B and metrics files work unchanged.

State travels as an ``ArrayRecord`` built from the state dict (by name, never by position). The
experiment config travels with every training message, so a deployed SuperNode needs only its data.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from omegaconf import DictConfig, OmegaConf

from fedaux.federated.client import TrainerOptions, derived_seed, train_client
from fedaux.federated.engines import Engine
from fedaux.federated.hooks import ClientUpdate, KeepsTotals, RoundCallback
from fedaux.federated.orchestrator import FederatedOrchestrator
from fedaux.federated.privacy import dp_sgd_settings

log = logging.getLogger(__name__)

ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"


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


# ---------------------------------------------------------------------------------------- client side
@lru_cache(maxsize=2)
def _experiment(yaml_text: str) -> DictConfig:
    from fedaux.config import load_config_text

    return load_config_text(yaml_text)


@lru_cache(maxsize=2)
def _simulated_data(yaml_text: str):
    """The whole federation's data, built once per worker process (simulation only)."""
    from fedaux.data.samples import build_federated_data

    cfg = _experiment(yaml_text)
    return build_federated_data(cfg.data, cfg.federated.base_stations, cfg.federated.edge_servers, cfg.seed,
                                main_target=cfg.model.heads[cfg.model.main_task].target)


@lru_cache(maxsize=4)
def _local_samples(yaml_text: str, data_root: str, client: int, class_names: tuple[str, ...]):
    from fedaux.data.samples import local_client_samples

    cfg = _experiment(yaml_text)
    cfg = OmegaConf.merge(cfg, {"data": {"root": data_root}})
    return local_client_samples(cfg.data, cfg.seed, client, class_names,
                                main_target=cfg.model.heads[cfg.model.main_task].target)


@lru_cache(maxsize=2)
def _model(yaml_text: str, target_classes_json: str):
    """The model, its seeded initial state (equal to the server's: same code, same seed) and the strategy."""
    from fedaux.federated.client import cpu_state
    from fedaux.federated.compression import Compression
    from fedaux.federated.privacy import ClientLevelDP
    from fedaux.federated.strategies import build_strategy
    from fedaux.model import build_model

    cfg = _experiment(yaml_text)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, json.loads(target_classes_json), cfg.data.packets, len(cfg.data.features))
    return (model, cpu_state(model), build_strategy(cfg.federated, model), Compression.from_config(cfg.federated.compression, model),
            ClientLevelDP.from_config(cfg.privacy))


LOCAL_STATE = "fedaux-local"  # the node's Context.state record holding what its base station keeps


def _client_identity(context: Context, config: ConfigRecord) -> tuple[int, str | None]:
    """(base station index, local data root or None). Simulation numbers nodes by ``partition-id``;
    a deployed SuperNode states ``base-station`` and ``data-root`` in its ``--node-config``."""
    node = context.node_config
    if "data-root" in node:
        return int(node.get("base-station", node.get("partition-id", 0))), str(node["data-root"])
    return int(node["partition-id"]), None


def _samples_for(context: Context, config: ConfigRecord):
    yaml_text = str(config["experiment"])
    client, data_root = _client_identity(context, config)
    if data_root is None:
        return client, _simulated_data(yaml_text).clients[client]
    classes = tuple(json.loads(str(config["class-names"])))
    return client, _local_samples(yaml_text, data_root, client, classes)


client_app = ClientApp()


@client_app.query()
def identify(msg: Message, context: Context) -> Message:
    """Tell the server which base station this node is and how many samples it holds."""
    client, samples = _samples_for(context, msg.content[CONFIG])
    reply = RecordDict({METRICS: MetricRecord({"client": client, "num-examples": len(samples)})})
    return Message(content=reply, reply_to=msg)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training: load the global arrays, fit with Lightning, send the new state back."""
    config = msg.content[CONFIG]
    yaml_text = str(config["experiment"])
    cfg = _experiment(yaml_text)
    if int(config.get("torch-threads", 0)) > 0:
        torch.set_num_threads(int(config["torch-threads"]))
    client, samples = _samples_for(context, config)
    model, initial_state, strategy, compression, privacy = _model(yaml_text, str(config["target-classes"]))
    rnd = int(config["server-round"])
    fed = cfg.federated
    # What this base station kept from its previous rounds (personal heads, control variates).
    local_state = from_record(context.state[LOCAL_STATE]) if LOCAL_STATE in context.state else {}
    test = _simulated_data(yaml_text).test if _client_identity(context, config)[1] is None else None
    fit = train_client(
        model, samples, compression.receive_down(from_record(msg.content[ARRAYS])), local_epochs=fed.local_epochs,
        batch_size=fed.batch_size,
        seed=derived_seed(cfg.seed, rnd, client), gradient_clip_val=fed.gradient_clip_val,
        trainer_options=TrainerOptions.from_config(cfg.trainer), strategy=strategy, local_state=local_state,
        initial_state=initial_state, test=test, compression=compression.uplink,
        privacy=privacy if privacy is not None and privacy.mode == "local" else None,
        dp_sgd=dp_sgd_settings(cfg.privacy), client=client,
    )
    if fit.local_state:
        context.state[LOCAL_STATE] = to_record(fit.local_state)
    metrics = MetricRecord({"client": client, "num-examples": len(samples), "fit_seconds": fit.seconds,
                             "loop_seconds": fit.loop_seconds, **fit.metrics})
    return Message(content=RecordDict({ARRAYS: to_record(fit.upload), METRICS: metrics}), reply_to=msg)


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


class TwoTierFedAvgStrategy(Strategy):
    """A Flower strategy that delegates selection, two-tier aggregation and evaluation to fedaux.

    Args:
        orchestrator: owns the global state, the partition's edge servers, the evaluator and the
            round hooks. Client selection uses the same seeded draw as the in-process engine.
        experiment_yaml: the resolved experiment config sent to every base station.
        traffic: counts what Flower sends; it must also be among the orchestrator's callbacks.
        first_round: the fedaux round of Flower's round 1 (``completed_rounds + 1`` when resuming):
            fedaux numbers rounds ``first_round - 1 + server_round`` in its records, seeds and hooks.
    """

    def __init__(self, orchestrator: FederatedOrchestrator, experiment_yaml: str, traffic: FlowerTraffic,
                 torch_threads: int = 0, first_round: int = 1) -> None:
        self.orchestrator = orchestrator
        self.traffic = traffic
        self.round_offset = first_round - 1
        data = orchestrator.data
        self.base_config = {
            "experiment": experiment_yaml,
            "target-classes": json.dumps({n: t.num_classes for n, t in data.targets.items()}),
            "class-names": json.dumps(list(data.flows.class_names)),
            "torch-threads": torch_threads,
        }
        self.node_of_client: dict[int, int] = {}
        self._selected: list[int] = []

    def summary(self) -> None:
        log.info("TwoTierFedAvgStrategy: %d base stations under %d edge servers", len(self.orchestrator.data.clients),
                 int(self.orchestrator.data.partition.edge_of_client.max()) + 1)

    def _identify_nodes(self, grid: Grid) -> None:
        """Ask every node which base station it is (node ids are assigned by Flower)."""
        node_ids = list(grid.get_node_ids())
        messages = [Message(content=RecordDict({CONFIG: ConfigRecord(dict(self.base_config))}),
                            message_type=MessageType.QUERY, dst_node_id=n) for n in node_ids]
        for reply in grid.send_and_receive(messages):
            if reply.has_error():
                raise RuntimeError(f"node {reply.metadata.src_node_id} failed to identify itself: {reply.error.reason}")
            self.node_of_client[int(reply.content[METRICS]["client"])] = reply.metadata.src_node_id
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
            metrics = reply.content[METRICS]
            updates.append(ClientUpdate(
                client=client, edge=int(self.orchestrator.data.partition.edge_of_client[client]),
                state=from_record(reply.content[ARRAYS]), num_samples=int(metrics["num-examples"]),
                train_metrics={k: float(v) for k, v in metrics.items() if k.startswith(("train/", "personal/", "privacy/"))},
                fit_seconds=float(metrics["fit_seconds"]), loop_seconds=float(metrics.get("loop_seconds", 0.0)),
            ))
        for client in sorted(set(self._selected) - answered):
            self.orchestrator.drop(rnd, client, "no reply within the round's timeout")
        # Replies arrive in any order; fold them in base-station order so both engines sum alike.
        for update in sorted(updates, key=lambda u: u.client):
            self.orchestrator.receive(rnd, update)
        record = self.orchestrator.finish_round(rnd)
        main = f"val/acc/{self.orchestrator.model.main_task}"
        return to_record(self.orchestrator.global_state), MetricRecord({"accuracy": float(record[main])})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return []  # the server evaluates the global model on the held-out flows in aggregate_train

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None


def flower_driver(grid: Grid, experiment_yaml: str, traffic: FlowerTraffic, torch_threads: int = 0,
                  timeout_s: float = 3600):
    """A ``drive`` for :meth:`FederatedOrchestrator.run` that lets a Flower strategy run the rounds
    the orchestrator has not completed yet (all of them, or the rest of a resumed run)."""

    def drive(orchestrator: FederatedOrchestrator) -> None:
        if traffic not in orchestrator.callbacks:
            raise ValueError("the FlowerTraffic counter must be among the orchestrator's callbacks (FlowerEngine.callbacks)")
        remaining = orchestrator.rounds_to_run()  # fewer than left when the privacy budget ends the run
        if remaining <= 0:
            return
        strategy = TwoTierFedAvgStrategy(orchestrator, experiment_yaml, traffic, torch_threads,
                                         first_round=orchestrator.completed_rounds + 1)
        strategy.start(grid, to_record(orchestrator.global_state), num_rounds=remaining, timeout=timeout_s)

    return drive


class FlowerEngine(Engine):
    """The experiment on Flower: on a deployment's ``grid`` (inside a ServerApp), or, with no grid,
    on Flower's simulation engine (Ray) on this machine with one SuperNode per base station."""

    def __init__(self, cfg: DictConfig, grid: Grid | None = None) -> None:
        self.cfg, self.grid = cfg, grid
        self.traffic = FlowerTraffic()
        self.experiment_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        flower = cfg.federated.flower
        self.timeout_s = cfg.federated.client_timeout_s or flower.timeout_s

    def callbacks(self) -> list[RoundCallback]:
        return [self.traffic]

    def driver(self, grid: Grid):
        return flower_driver(grid, self.experiment_yaml, self.traffic, self.cfg.federated.flower.torch_threads,
                             self.timeout_s)

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
