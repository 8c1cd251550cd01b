"""Callbacks for fedaux runs: Lightning callbacks plus federated round hooks.

Each logs one thing: metrics files, bytes sent, time, energy, Weights & Biases, progress,
checkpoints, the phase of a run that pre-trains, the unknown-traffic statistics. This folder is
installed as ``fedaux.callbacks``; each callback registers itself in
:data:`fedaux.federated.hooks.CALLBACKS` under the name ``logging.callbacks`` accepts.
"""

from fedaux.callbacks.checkpoint import Checkpointer
from fedaux.callbacks.communication import CommunicationTracker
from fedaux.callbacks.energy import EnergyTracker
from fedaux.callbacks.metrics import MetricsWriter
from fedaux.callbacks.phase import PhaseLogger
from fedaux.callbacks.progress import RoundProgressBar
from fedaux.callbacks.timing import RoundTimer
from fedaux.callbacks.unknown import UnknownTraffic
from fedaux.callbacks.wandb_logger import WandbLogger

__all__ = ["Checkpointer", "CommunicationTracker", "EnergyTracker", "MetricsWriter", "PhaseLogger", "RoundProgressBar",
           "RoundTimer", "UnknownTraffic", "WandbLogger"]
