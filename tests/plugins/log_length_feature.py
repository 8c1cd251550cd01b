"""A per-packet feature added from outside fedaux: one file, one registration."""

import numpy as np

from fedaux.data.features import PACKET_FEATURES


@PACKET_FEATURES.register("log_length")
def log_length(flows):
    """log1p(length) / log1p(1500), clipped to [0, 1]: packet sizes on a log scale, direction left out."""
    return np.clip(np.log1p(flows.lengths.astype(np.float64)) / np.log1p(1500.0), 0.0, 1.0)
