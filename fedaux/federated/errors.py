"""Errors of the federated loop (a light module: the CLI imports it without loading torch)."""


class ClientTimeout(TimeoutError):
    """A base station did not answer within ``federated.client_timeout_s``."""


class NotEnoughClients(RuntimeError):
    """A round ended with fewer valid updates than ``federated.min_clients``."""
