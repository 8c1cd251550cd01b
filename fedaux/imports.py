"""Resolving names in config: registries of named functions, and ``"package.module:attribute"`` paths."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def registrar(registry: dict[str, T]) -> Callable[[str], Callable[[T], T]]:
    """A decorator factory: ``@register("name")`` adds the decorated object to ``registry``."""

    def register(name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            registry[name] = obj
            return obj

        return add

    return register


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
