"""Equal weighting: the plain sum of task losses, as in MT-DNN (Liu et al., ACL 2019) and the
MT-DNN-FL baseline of FedAuxHMTL."""

from __future__ import annotations

import torch

from fedaux.model.weighting.base import WEIGHTINGS, LossWeighting


@WEIGHTINGS.register("equal")
class EqualWeighting(LossWeighting):
    """Every task has weight 1."""

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(losses)
