"""Resolving ``"package.module:attribute"`` import paths named in config."""

from __future__ import annotations

import importlib
from typing import Any


def import_by_path(spec: str, key: str) -> Any:
    """The object named by ``"package.module:attribute"``.

    Raises:
        ValueError: naming the config ``key``, the bad value and what went wrong.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{key}={spec!r} is not an import path of the form 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{key}={spec!r}: cannot import module {module_name!r} ({err})") from None
    if not hasattr(module, attr):
        raise ValueError(f"{key}={spec!r}: module {module_name!r} has no attribute {attr!r}")
    return getattr(module, attr)
