"""An edge aggregation rule added from outside fedaux: one file, one registration."""

from fedaux.federated.aggregation import AGGREGATION_RULES


@AGGREGATION_RULES.register("first_client")
class FirstClient:
    """Each edge server forwards its first base station's state unchanged (a test rule, not a method)."""

    def __init__(self, **options):
        self.state, self.weight = None, 0.0

    def add(self, state, weight):
        if self.state is None:
            self.state = {k: v.clone() for k, v in state.items()}
        self.weight += weight

    def result(self):
        return self.state
