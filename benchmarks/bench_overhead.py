"""Benchmark: seconds per round of the in-process engine, sequential and parallel, against
Flower's simulation engine and the hardware bound, all measured in one run on one machine.

Usage: python benchmarks/bench_overhead.py [--rounds 5] [--skip-flower] [key=value ...]

Rows (the default experiment, conf/quic.yaml, unless overridden):

* **bound**: the hardware bound. A plain PyTorch loop (no Lightning, no orchestrator) over the same
  windows, batches, seeds, model, loss weighting, optimiser and clipping, in one process per core
  with one torch thread each; a round's base stations are split between the processes to balance
  their windows. A round's time is the slowest process's training time plus a plain evaluation of
  the held-out windows in this process. Nothing is pickled or sent: no engine can beat it.
* **sequential**: the orchestrator fitting base stations one after another (``federated.workers=1``)
  with every core's threads.
* **parallel**: the orchestrator with one worker process per core (``federated.workers`` default).
* **flower**: the Flower simulation engine (Ray), one torch thread per simulated base station.

Engines report ``time/round_s`` (training, aggregation and evaluation); the mean over rounds 2 on
is the steady state, round 1 (process and Ray start-up) is shown apart. A last line compares the
plain loop and the orchestrator in one process and one thread, and checks that both end with the
same weights: the cost of Lightning itself.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import tempfile
import time
import warnings

import numpy as np
import torch

from fedaux.config import load_config
from fedaux.data.datamodule import batch_loader
from fedaux.data.samples import build_federated_data
from fedaux.federated.aggregation import cpu_state, two_tier_fedavg
from fedaux.federated.engines import available_cores
from fedaux.federated.engines.workers import _PRELOAD
from fedaux.federated.seeds import fit_seed
from fedaux.federated.selection import select_clients
from fedaux.train import build_orchestrator, run


# ------------------------------------------------------------------------------- the plain loop
def plain_fit(model, samples, state, seed: int, epochs: int, batch_size: int, clip: float | None) -> dict:
    """One base station's local fit with no framework: what ClientRuntime.fit computes for FedAvg."""
    model.load_state_dict(state)
    model.train()
    torch.manual_seed(seed)
    optimizer = model.configure_optimizers()
    for _ in range(epochs):
        for batch in batch_loader(samples, batch_size, shuffle=True, seed=seed):
            _, losses = model.task_losses(batch)
            total, _ = model.weighting(losses)
            optimizer.zero_grad()
            total.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
        model.weighting.on_epoch_end()
    return cpu_state(model)


@torch.no_grad()
def plain_evaluate(model, test, batch_size: int) -> float:
    model.eval()
    correct = 0
    for batch in batch_loader(test, batch_size, shuffle=False):
        correct += (model(batch["x"])[model.main_task].argmax(1) == batch[model.main_task]).sum().item()
    return correct / len(test)


def plain_fedavg(orchestrator, rounds: int) -> tuple[float, dict]:
    """The federated computation in this process, one client after another."""
    model, data = orchestrator.model, orchestrator.data
    state = cpu_state(model)
    start = time.perf_counter()
    for rnd in range(1, rounds + 1):
        states, samples = {}, {}
        options = orchestrator.runtime.options
        for client in select_clients(orchestrator.seed, rnd, len(data.clients), orchestrator.settings.fraction):
            states[client] = plain_fit(model, data.clients[client], state, fit_seed(orchestrator.seed, rnd, client),
                                       options.local_epochs, options.batch_size, options.gradient_clip_val)
            samples[client] = len(data.clients[client])
        state = two_tier_fedavg(states, samples, data.partition.edge_of_client).global_state
        model.load_state_dict(state)
        plain_evaluate(model, data.test, orchestrator.evaluator.datamodule.batch_size)
    return (time.perf_counter() - start) / rounds, state


# ----------------------------------------------------------------------- the bound: one process per core
_BOUND: dict = {}


def _bound_init(overrides: list[str]) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    cfg = load_config("conf/quic.yaml", [*overrides, "federated.workers=1"])
    _BOUND["orchestrator"] = build_orchestrator(cfg)


def _bound_fit(job: tuple[dict, list[tuple[int, int]]]) -> tuple[dict, float]:
    """Fit this process's share of a round's base stations; return their states and the seconds."""
    state, share = job
    o = _BOUND["orchestrator"]
    start = time.perf_counter()
    options = o.runtime.options
    states = {c: plain_fit(o.model, o.data.clients[c], state, seed, options.local_epochs, options.batch_size,
                           options.gradient_clip_val) for c, seed in share}
    return states, time.perf_counter() - start


def balanced_shares(sizes: dict[int, int], processes: int) -> list[list[int]]:
    """Clients split into ``processes`` lists of about equal total size (largest first, to the lightest)."""
    shares: list[list[int]] = [[] for _ in range(processes)]
    load = [0] * processes
    for client in sorted(sizes, key=lambda c: -sizes[c]):
        lightest = int(np.argmin(load))
        shares[lightest].append(client)
        load[lightest] += sizes[client]
    return [s for s in shares if s]


def hardware_bound(cfg, overrides: list[str], rounds: int, processes: int) -> list[float]:
    """Seconds per round of the plain loop on ``processes`` single-thread processes (see the module doc)."""
    orchestrator = build_orchestrator(cfg)
    data = orchestrator.data
    state = cpu_state(orchestrator.model)
    per_round = []
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)  # as the engine's workers: the server imports torch once
    with context.Pool(processes, initializer=_bound_init, initargs=(overrides,)) as pool:
        pool.map(time.sleep, [0.5] * processes)  # every process has built its model and data
        for rnd in range(1, rounds + 1):
            clients = select_clients(cfg.seed, rnd, len(data.clients), cfg.federated.fraction)
            shares = balanced_shares({c: len(data.clients[c]) for c in clients}, processes)
            jobs = [(state, [(c, fit_seed(cfg.seed, rnd, c)) for c in share]) for share in shares]
            results = pool.map(_bound_fit, jobs)
            states = {c: s for part, _ in results for c, s in part.items()}
            state = two_tier_fedavg(states, {c: len(data.clients[c]) for c in states},
                                    data.partition.edge_of_client).global_state
            orchestrator.model.load_state_dict(state)
            start = time.perf_counter()
            plain_evaluate(orchestrator.model, data.test, cfg.federated.eval_batch_size)
            per_round.append(max(seconds for _, seconds in results) + time.perf_counter() - start)
    return per_round


# ------------------------------------------------------------------------------------ the engines
def engine_rounds(overrides: list[str], rounds: int, out: str, *extra: str) -> list[float]:
    cfg = load_config("conf/quic.yaml", [*overrides, f"federated.rounds={rounds}", f"output_dir={out}",
                                         "logging.wandb.mode=disabled", "logging.progress=false",
                                         "logging.energy=false", "logging.plots=false", *extra])
    return [r["time/round_s"] for r in run(cfg).history]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-flower", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    cores = available_cores()
    cfg = load_config("conf/quic.yaml", args.overrides)
    rows: dict[str, list[float]] = {}
    rows["bound"] = hardware_bound(cfg, args.overrides, args.rounds, cores)
    with tempfile.TemporaryDirectory() as out:
        torch.set_num_threads(cores)
        rows["sequential"] = engine_rounds(args.overrides, args.rounds, out, "federated.workers=1")
        rows["parallel"] = engine_rounds(args.overrides, args.rounds, out, f"federated.workers={cores}")
        if not args.skip_flower:
            rows["flower"] = engine_rounds(args.overrides, args.rounds, out, "federated.engine=flower",
                                           "federated.flower.torch_threads=1")
    bound = float(np.mean(rows["bound"][1:]))
    print(f"{cfg.federated.base_stations} base stations, {cores} cores, {args.rounds} rounds, torch "
          f"{torch.__version__}")
    print(f"{'':>11} {'round 1 s':>10} {'rounds 2+ s':>12} {'/ bound':>8}")
    for name, times in rows.items():
        steady = float(np.mean(times[1:]))
        print(f"{name:>11} {times[0]:>10.3f} {steady:>12.3f} {steady / bound:>8.2f}")
    if "flower" in rows:
        print(f"parallel / flower: {np.mean(rows['parallel'][1:]) / np.mean(rows['flower'][1:]):.2f}")

    # Lightning's own cost: the same fits in one process and one thread, plain loop vs orchestrator.
    torch.set_num_threads(1)
    one = load_config("conf/quic.yaml", [*args.overrides, "federated.workers=1"])
    data = build_federated_data(one.data, one.federated.base_stations, one.federated.edge_servers, one.seed)
    plain_s, plain_state = plain_fedavg(build_orchestrator(one, data), 3)
    orchestrator = build_orchestrator(one, data)
    start = time.perf_counter()
    for rnd in range(1, 4):
        orchestrator.engine.run_round(orchestrator, rnd)
    lightning_s = (time.perf_counter() - start) / 3
    max_diff = max((plain_state[k] - orchestrator.global_state[k]).abs().max().item() for k in plain_state)
    print(f"one process, one thread, 3 rounds: plain {plain_s:.3f} s/round, orchestrator {lightning_s:.3f} s/round, "
          f"ratio {lightning_s / plain_s:.2f}; max |weight difference| {max_diff:.2e}")


if __name__ == "__main__":
    main()
