"""Named extension points: one registry shape for every family (features, targets, readers, ...).

A family's registry lives next to its implementations. Adding an implementation is one module
and one ``@REGISTRY.register("name")`` line; config validation reads the valid names from the
registries, so the list of names exists once.

Example:
    >>> from fedaux.registry import Registry
    >>> COLOURS = Registry("colour", "paint.colour")
    >>> @COLOURS.register("red")
    ... def red():
    ...     return "#f00"
    >>> COLOURS.get("red")()
    '#f00'
    >>> COLOURS.get("blue")
    Traceback (most recent call last):
    ...
    fedaux.errors.ConfigError: paint.colour='blue' is not valid; choose one of ['red']
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from fedaux.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Implementations of one family, by name.

    Args:
        family: what the entries are, in words ("loss weighting").
        config_key: the dotted config key that selects an entry (named in error messages).
        allow_import_path: whether :meth:`get` also accepts ``"package.module:attribute"``, so a
            user's implementation needs no registration at all.
    """

    def __init__(self, family: str, config_key: str, allow_import_path: bool = False) -> None:
        self.family, self.config_key, self.allow_import_path = family, config_key, allow_import_path
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding ``obj`` under ``name``; a second entry of one name is an error."""

        def add(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.family} {name!r} is registered twice ({self._entries[name]!r} and {obj!r})")
            self._entries[name] = obj
            return obj

        return add

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests and plug-ins that replace a built-in)."""
        self._entries.pop(name, None)

    def get(self, name: str, key: str | None = None) -> T:
        """The entry called ``name``, or the object at an import path where the registry allows it.

        Raises:
            ConfigError: naming ``key`` (default: the registry's config key), the bad value and
                the valid names.
        """
        key = key or self.config_key
        if name in self._entries:
            return self._entries[name]
        if self.allow_import_path and isinstance(name, str) and ":" in name:
            return import_by_path(name, key)
        extra = " or an import path 'package.module:attribute'" if self.allow_import_path else ""
        raise ConfigError(f"{key}={name!r} is not valid; choose one of {sorted(self.names())}{extra}")

    def names(self) -> list[str]:
        """The registered names, in the order they were registered."""
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.family!r}, {self.config_key!r}, names={self.names()})"


def import_by_path(spec: str, key: str) -> Any:
    """The object named by ``"package.module:attribute"``.

    Raises:
        ConfigError: naming the config ``key``, the bad value and what went wrong.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{key}={spec!r} is not an import path of the form 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        # A user's module beside their config, run through a console script (whose sys.path lacks
        # the current folder): look there too, as `python -m` would.
        here = os.getcwd()
        if err.name != module_name.partition(".")[0] or here in sys.path:
            raise ConfigError(f"{key}={spec!r}: cannot import module {module_name!r} ({err})") from None
        sys.path.append(here)
        try:
            module = importlib.import_module(module_name)
        except ImportError as again:
            sys.path.remove(here)
            raise ConfigError(f"{key}={spec!r}: cannot import module {module_name!r} ({again})") from None
    except ImportError as err:
        raise ConfigError(f"{key}={spec!r}: cannot import module {module_name!r} ({err})") from None
    if not hasattr(module, attr):
        raise ConfigError(f"{key}={spec!r}: module {module_name!r} has no attribute {attr!r}")
    return getattr(module, attr)
