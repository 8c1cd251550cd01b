"""L2 norms of base stations' first-round updates, weights and running statistics apart.

Usage: python benchmarks/update_norms.py [--clients 4] [key=value ...]

What ``privacy.clip_norm`` is measured against: client-level DP clips the whole update (every
float entry), and the noise it adds grows with the bound, so the bound trades clipping bias
against noise.
"""

from __future__ import annotations

import argparse
import warnings

import torch

from fedaux.config import load_config
from fedaux.federated.compression import running_statistics
from fedaux.train import build_orchestrator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="conf/quic.yaml")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    cfg = load_config(args.config, [*args.overrides, "logging.wandb.mode=disabled", "federated.workers=1"])
    orchestrator = build_orchestrator(cfg)
    statistics = running_statistics(orchestrator.model)
    payload = dict(orchestrator.global_state)
    print(f"{'base station':>12} {'weights':>8} {'statistics':>10} {'whole':>8}")
    for client in range(min(args.clients, len(orchestrator.data.clients))):
        upload = orchestrator.runtime.fit(client, orchestrator.data.clients[client], payload, rnd=1).upload
        delta = {k: (upload[k] - payload[k]).flatten() for k in payload if payload[k].is_floating_point()}
        weights = [k for k in delta if k not in statistics]
        stats = [k for k in delta if k in statistics]
        print(f"{client:>12} {_norm(delta, weights):>8.2f} {_norm(delta, stats):>10.2f} {_norm(delta, list(delta)):>8.2f}")


def _norm(delta: dict[str, torch.Tensor], keys: list[str]) -> float:
    return torch.cat([delta[k] for k in keys]).norm().item() if keys else 0.0


if __name__ == "__main__":
    main()
