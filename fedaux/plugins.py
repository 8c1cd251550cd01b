"""User plug-in modules (the ``plugins`` config key): imported before a config is checked, in every process.

A plug-in module registers implementations by name (``@WEIGHTINGS.register("mine")``, a codec, a
strategy, an update stage, ...), so importing it is what makes its names valid config values.
The server imports the modules when it loads the config; each worker process and each Flower node
imports them again before it builds its runtime, so a plug-in works on every engine.

This module imports nothing of fedaux but its errors, so any process can call it first.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from fedaux.errors import ConfigError


def _is_path(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def resolve_plugin_paths(specs: Sequence[str]) -> list[str]:
    """File entries made absolute (relative to the current folder); module names as they are."""
    return [str(Path(spec).expanduser().resolve()) if _is_path(spec) else spec for spec in specs]


def import_plugins(specs: Sequence[str], key: str = "plugins") -> None:
    """Import each plug-in module (``package.module`` or a path to a ``.py`` file) once.

    A file is imported as a module named after it, with its folder put on ``sys.path`` so that
    worker processes and pickled objects find it again by name.

    Raises:
        ConfigError: naming the entry and why it cannot be imported.
    """
    for i, spec in enumerate(specs):
        entry = f"{key}[{i}]={spec!r}"
        if _is_path(spec):
            path = Path(spec).expanduser().resolve()
            if not path.is_file():
                raise ConfigError(f"{entry}: no such file")
            folder, name = str(path.parent), path.stem
            if folder not in sys.path:
                sys.path.insert(0, folder)
            loaded = sys.modules.get(name)
            if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path:
                continue
            if loaded is not None:
                raise ConfigError(f"{entry}: a module named {name!r} is already imported from elsewhere; rename the file")
            spec_obj = importlib.util.spec_from_file_location(name, path)
            if spec_obj is None or spec_obj.loader is None:
                raise ConfigError(f"{entry}: not an importable Python file")
            module = importlib.util.module_from_spec(spec_obj)
            sys.modules[name] = module
            try:
                spec_obj.loader.exec_module(module)
            except Exception:
                sys.modules.pop(name, None)
                raise
        else:
            try:
                importlib.import_module(spec)
            except ImportError as err:
                raise ConfigError(f"{entry}: cannot import it ({err})") from None
