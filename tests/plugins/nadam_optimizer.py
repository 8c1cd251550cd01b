"""An optimiser added from outside fedaux: one file, one registration."""

import torch

from fedaux.model.optimizers import OPTIMIZERS


@OPTIMIZERS.register("nadam")
def nadam(params, cfg):
    return torch.optim.NAdam(params, lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0))
