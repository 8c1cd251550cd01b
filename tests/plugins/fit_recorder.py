"""A Lightning callback from ``logging.callbacks`` that records every base station's fit, in
whichever process runs it, one JSON line per fit in ``<output_dir>/fits.jsonl``."""

import json
import os
from pathlib import Path

import lightning as L

from fedaux.federated.hooks import RoundCallback


class FitRecorder(L.Callback, RoundCallback):
    def __init__(self, path):
        self.path = Path(path)

    @classmethod
    def from_config(cls, cfg, run_dir):
        return cls(Path(cfg.output_dir) / "fits.jsonl")

    def on_train_end(self, trainer, pl_module):
        module = trainer.datamodule
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"round": module.rnd, "client": module.client, "pid": os.getpid(),
                                     "steps": trainer.global_step}) + "\n")
