"""A loss weighting added from outside fedaux: one file, one registration."""

import torch

from fedaux.model.weighting import WEIGHTINGS, LossWeighting


@WEIGHTINGS.register("main_only")
class MainOnlyWeighting(LossWeighting):
    """Weight 1 on the main task, 0 on the auxiliary tasks (a single-task baseline with aux heads)."""

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        weights = torch.zeros_like(losses)
        weights[self.main_index] = 1.0
        return weights
