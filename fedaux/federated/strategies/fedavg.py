"""FedAvg (McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
Data", AISTATS 2017): every base station trains the whole model; the tiers average it."""

from __future__ import annotations

from fedaux.federated.strategies.base import STRATEGIES, Strategy

STRATEGIES.register("fedavg")(Strategy)
