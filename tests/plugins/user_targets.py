"""A derived target from a user module, named by import path (``data.targets.<name>.fn``)."""

import numpy as np


def mean_size(flow):
    """The flow's mean packet size in bytes: binned into classes, or kept as a regression target."""
    return float(np.mean(flow.lengths))
