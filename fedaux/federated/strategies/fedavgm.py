"""FedAvgM (Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for Federated
Visual Classification", 2019): server momentum on the pseudo-gradient, by ``torch.optim.SGD``
(``v <- beta v + delta``; ``x <- x - server_lr * v``)."""

from __future__ import annotations

import torch

from fedaux.federated.strategies.base import STRATEGIES
from fedaux.federated.strategies.server_optimizer import ServerOptimizerStrategy


@STRATEGIES.register("fedavgm")
class FedAvgM(ServerOptimizerStrategy):
    """``federated.server_lr`` and ``federated.server_momentum`` at the top tier."""

    def make_optimizer(self, params):
        momentum = float(getattr(self.fed_cfg, "server_momentum", 0.9)) if self.fed_cfg is not None else 0.9
        return torch.optim.SGD(params, lr=self.server_lr, momentum=momentum)
