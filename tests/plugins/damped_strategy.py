"""A federated strategy added from outside fedaux: one file, one option (``federated.strategy_options.damping``)."""

from fedaux.errors import ConfigError
from fedaux.federated.strategies import STRATEGIES, Strategy


@STRATEGIES.register("damped_fedavg")
class DampedFedAvg(Strategy):
    """FedAvg that moves the global model only ``damping`` of the way to the average each round."""

    def __init__(self, param_names, fed_cfg=None):
        super().__init__(param_names, fed_cfg)
        options = dict(fed_cfg.strategy_options) if fed_cfg is not None else {}
        self.damping = float(options.get("damping", 0.5))
        if not 0 < self.damping <= 1:
            raise ConfigError(f"federated.strategy_options.damping={self.damping} must be in (0, 1]")

    def server_update(self, global_state, aggregate, participants, clients):
        return {k: (v + self.damping * (aggregate[k] - v)).to(v.dtype) if v.is_floating_point() else aggregate.get(k, v)
                for k, v in global_state.items()}
