"""A trunk normalisation added from outside fedaux: one file, one registration (a module-level
function, so the model it builds pickles into worker processes)."""

from torch import nn

from fedaux.model.trunk import NORMS


@NORMS.register("layer")
def layer_norm(channels):
    """One group over all channels: layer normalisation over (channels, packets)."""
    return [nn.GroupNorm(1, channels)]
