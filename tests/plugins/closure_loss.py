"""A task loss written as a closure: it runs in this process, but cannot be pickled into a worker."""

import torch.nn.functional as F

from fedaux.model.losses import LOSSES


def _scaled(scale):
    def loss(output, target):
        return scale * F.mse_loss(output.squeeze(-1), target.to(output.dtype))

    return loss


LOSSES.register("scaled_mse")(_scaled(2.0))
