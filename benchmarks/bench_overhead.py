"""Benchmark: the Lightning orchestrator against a minimal plain-PyTorch FedAvg loop.

Usage: python benchmarks/bench_overhead.py [--rounds 3] [--repeat 3] [key=value ...]

Both do the same local steps on the same batches (same seeds, same shuffling, same model, loss,
weighting, optimizer and gradient clipping), aggregate with the same function and evaluate the
global model on the test set each round. Reports seconds per round for each and their ratio
(orchestrator / plain), best of ``--repeat``, and checks that both end with the same weights.
"""

from __future__ import annotations

import argparse
import time

import torch

from fedaux.config import load_config
from fedaux.data.datamodule import batch_loader
from fedaux.data.samples import build_federated_data
from fedaux.federated.aggregation import two_tier_fedavg
from fedaux.federated.client import cpu_state, derived_seed
from fedaux.federated.orchestrator import select_clients
from fedaux.train import build_orchestrator


def plain_fedavg(orchestrator, rounds: int) -> tuple[float, dict]:
    """The same federated computation with no Lightning: an explicit loop per client."""
    model, data = orchestrator.model, orchestrator.data
    model.load_state_dict(orchestrator.global_state)
    global_state = cpu_state(model)
    clip = orchestrator.gradient_clip_val
    start = time.perf_counter()
    for rnd in range(1, rounds + 1):
        states, samples = {}, {}
        for client in select_clients(orchestrator.seed, rnd, len(data.clients), orchestrator.fraction):
            seed = derived_seed(orchestrator.seed, rnd, client)
            model.load_state_dict(global_state)
            model.train()
            torch.manual_seed(seed)
            optimizer = model.configure_optimizers()
            for _ in range(orchestrator.local_epochs):
                for batch in batch_loader(data.clients[client], orchestrator.batch_size, shuffle=True, seed=seed):
                    _, losses = model.task_losses(batch)
                    total, _ = model.weighting(losses)
                    optimizer.zero_grad()
                    total.backward()
                    if clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                    optimizer.step()
                model.weighting.on_epoch_end()
            states[client], samples[client] = cpu_state(model), len(data.clients[client])
        global_state = two_tier_fedavg(states, samples, data.partition.edge_of_client).global_state
        model.load_state_dict(global_state)
        model.eval()
        with torch.no_grad():
            correct = 0
            for batch in batch_loader(data.test, orchestrator.evaluator.datamodule.batch_size, shuffle=False):
                correct += (model(batch["x"])[model.main_task].argmax(1) == batch[model.main_task]).sum().item()
    return (time.perf_counter() - start) / rounds, global_state


def lightning_fedavg(orchestrator, rounds: int) -> tuple[float, dict]:
    start = time.perf_counter()
    for rnd in range(1, rounds + 1):
        orchestrator.run_round(rnd)
    return (time.perf_counter() - start) / rounds, orchestrator.global_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="conf/quic.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    data = build_federated_data(cfg.data, cfg.federated.base_stations, cfg.federated.edge_servers, cfg.seed)
    plain_s, fedaux_s = [], []
    for _ in range(args.repeat):
        seconds, plain_state = plain_fedavg(build_orchestrator(cfg, data), args.rounds)
        plain_s.append(seconds)
        seconds, fedaux_state = lightning_fedavg(build_orchestrator(cfg, data), args.rounds)
        fedaux_s.append(seconds)
    max_diff = max((plain_state[k] - fedaux_state[k]).abs().max().item() for k in plain_state)
    steps = sum(-(-len(c) // cfg.federated.batch_size) for c in data.clients) * cfg.federated.local_epochs
    print(f"{cfg.federated.base_stations} base stations, {steps} local steps per round, {args.rounds} rounds, "
          f"best of {args.repeat}, torch threads {torch.get_num_threads()}")
    print(f"plain PyTorch loop : {min(plain_s):.3f} s/round")
    print(f"fedaux orchestrator: {min(fedaux_s):.3f} s/round")
    print(f"ratio orchestrator/plain: {min(fedaux_s) / min(plain_s):.3f}")
    print(f"max |weight difference| after {args.rounds} rounds: {max_diff:.2e}")


if __name__ == "__main__":
    main()
