"""An update stage added from outside fedaux: one file. It keeps state of its own on each base station."""

import torch

from fedaux.federated.pipeline import STAGES, UpdateStage


@STAGES.register("fit_counter")
class FitCounter(UpdateStage):
    """After the strategy's upload, counts the base station's fits in its own local-state namespace
    and leaves the update as it is."""

    slot = "base_station.upload"
    state_key = "fit_counter"

    def __call__(self, update, context):
        context.keep["fits"] = context.previous.get("fits", torch.zeros((), dtype=torch.int64)) + 1
        return update
