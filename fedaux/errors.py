"""Errors a user can cause and fix: bad config, bad data, an unusable checkpoint, too few clients.

Every one derives from :class:`FedauxError`; the command-line tools print such an error as one line
and exit 2. Anything else is a bug in fedaux or in a plug-in and keeps its traceback. This module
imports nothing heavy, so the CLI can name these types without loading torch.
"""

from __future__ import annotations


class FedauxError(Exception):
    """Base class of the errors a user can fix; the message says what is wrong and what would be valid."""


class ConfigError(FedauxError, ValueError):
    """A config file, key or value is not valid; the message says which and what would be."""


class DataError(FedauxError, ValueError):
    """Flow data (a folder, file or store) is missing or does not follow its format."""


class CheckpointError(FedauxError, ValueError):
    """A run folder has no checkpoint, or one this fedaux cannot read."""


class NotEnoughClients(FedauxError, RuntimeError):
    """A round ended with fewer valid updates than ``federated.min_clients``."""
