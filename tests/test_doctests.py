"""The ``>>>`` examples in docstrings run, so they cannot drift from the code they show."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import fedaux.callbacks
import pytest

import fedaux


def _modules() -> list[str]:
    # fedaux.callbacks is installed from the repository's callbacks/ folder, outside fedaux's path.
    names = {"fedaux", "fedaux.callbacks"}
    for package in (fedaux, fedaux.callbacks):
        names.update(m.name for m in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."))
    # ``python -m`` entry points run their program on import; they hold no examples.
    return sorted(n for n in names if not n.endswith(".__main__"))


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples failed in {name}"


def test_the_examples_exist():
    """Guards against the walk silently finding nothing (e.g. a packaging change)."""
    finder = doctest.DocTestFinder()
    examples = sum(len(t.examples) for name in _modules() for t in finder.find(importlib.import_module(name)))
    assert examples >= 10, examples
    assert "fedaux.callbacks.checkpoint" in _modules()
