"""An update codec added from outside fedaux: one file, one option (``federated.compression.options.levels``)."""

import torch

from fedaux.errors import ConfigError
from fedaux.federated.compression import CODECS, Codec


@CODECS.register("uniform_levels")
class UniformLevels(Codec):
    """Each value rounded to one of ``levels`` evenly spaced values between the tensor's min and max:
    one uint8 a value plus two float32 bounds (``levels`` at most 256)."""

    def __init__(self, levels: int = 16) -> None:
        if not 2 <= levels <= 256:
            raise ConfigError(f"federated.compression.options.levels={levels} must be in [2, 256]")
        self.levels = int(levels)

    @classmethod
    def from_options(cls, levels: int = 16, **_other):
        return cls(levels)

    def encode(self, tensor):
        lo, hi = tensor.min().to(torch.float32), tensor.max().to(torch.float32)
        step = (hi - lo) / (self.levels - 1) if hi > lo else torch.ones(())
        q = torch.round((tensor.to(torch.float32) - lo) / step).clamp_(0, self.levels - 1).to(torch.uint8)
        return {"q": q, "lo": lo.reshape(1), "step": step.reshape(1)}

    def decode(self, parts, like):
        return (parts["lo"] + parts["q"].to(torch.float32) * parts["step"]).to(like.dtype)
