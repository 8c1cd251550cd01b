"""Callbacks for fedaux runs: Lightning callbacks plus federated round hooks.

Each logs one thing: metrics files, bytes sent, time, energy, Weights & Biases, progress.
"""

from callbacks.communication import CommunicationTracker
from callbacks.energy import EnergyTracker
from callbacks.metrics import MetricsWriter
from callbacks.progress import RoundProgressBar
from callbacks.timing import RoundTimer
from callbacks.wandb_logger import WandbLogger

__all__ = ["CommunicationTracker", "EnergyTracker", "MetricsWriter", "RoundProgressBar", "RoundTimer", "WandbLogger"]
