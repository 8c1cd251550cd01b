"""Errors of the federated loop (a light module: the CLI imports it without loading torch)."""

from fedaux.errors import NotEnoughClients


class ClientTimeout(TimeoutError):
    """A base station did not answer within ``federated.client_timeout_s``."""


__all__ = ["ClientTimeout", "NotEnoughClients"]
