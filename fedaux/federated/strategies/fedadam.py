"""FedAdam (Reddi et al., "Adaptive Federated Optimization", ICLR 2021): Adam on the pseudo-gradient
at the top tier, by ``torch.optim.Adam`` with ``eps`` as the paper's adaptivity ``tau``. torch's
Adam corrects the moments' bias, as Flower's FedAdam does; the paper's version does not."""

from __future__ import annotations

import torch

from fedaux.federated.strategies.base import STRATEGIES
from fedaux.federated.strategies.server_optimizer import ServerOptimizerStrategy


@STRATEGIES.register("fedadam")
class FedAdam(ServerOptimizerStrategy):
    """``federated.server_lr``, ``server_betas`` and ``server_tau`` at the top tier."""

    default_server_lr = 0.01  # Reddi et al. tune it in [1e-3, 1]; 0.01 with clients at Adam 1e-3

    def make_optimizer(self, params):
        cfg = self.fed_cfg
        betas = tuple(cfg.server_betas) if cfg is not None else (0.9, 0.99)
        tau = float(cfg.server_tau) if cfg is not None else 1e-3
        return torch.optim.Adam(params, lr=self.server_lr, betas=betas, eps=tau)
