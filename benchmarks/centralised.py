"""Centralised sanity run: a plain Lightning fit on all training flows, scored on held-out flows.

Usage: python benchmarks/centralised.py [--epochs 15] [--seeds 0 1 2] [key=value ...]

Compares the single-task model (traffic_class head only) with the multi-task model (plus the
bandwidth and duration heads, random weighting) at 10% and 100% main labels. Same test flows,
same training windows and the same label masks for every variant of a seed.
"""

from __future__ import annotations

import argparse
import logging
import warnings

import lightning as L
import numpy as np

from fedaux.config import load_config
from fedaux.data.datamodule import ClientDataModule, HeldOutDataModule
from fedaux.data.samples import build_federated_data
from fedaux.model import build_model

VARIANTS = {
    "single-task": ["model.heads.bandwidth=null", "model.heads.duration=null"],
    "multi-task (random)": [],
}


def fit_and_score(cfg, epochs: int) -> float:
    L.seed_everything(cfg.seed, verbose=False)
    data = build_federated_data(cfg.data, base_stations=1, edge_servers=1, seed=cfg.seed)
    model = build_model(cfg.model, data.target_classes, cfg.data.packets, len(cfg.data.features))
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, gradient_clip_val=cfg.federated.gradient_clip_val,
                        num_sanity_val_steps=0)
    trainer.fit(model, ClientDataModule(data.clients[0], cfg.federated.batch_size, seed=cfg.seed))
    return trainer.validate(model, HeldOutDataModule(data.test), verbose=False)[0]["val/acc/traffic_class"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="conf/quic.yaml")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    print(f"held-out main-task accuracy, {args.epochs} epochs, seeds {args.seeds} (mean ± std)")
    print(f"{'model':<22}{'10% labels':>16}{'100% labels':>16}")
    for variant, extra in VARIANTS.items():
        row = []
        for fraction in (0.1, 1.0):
            accs = [
                fit_and_score(load_config(args.config, [*extra, *args.overrides, f"seed={seed}",
                                                        f"data.labeled_fraction={fraction}", "data.partition.scheme=iid"]),
                              args.epochs)
                for seed in args.seeds
            ]
            row.append(f"{np.mean(accs):.3f} ± {np.std(accs):.3f}")
        print(f"{variant:<22}{row[0]:>16}{row[1]:>16}", flush=True)


if __name__ == "__main__":
    main()
