"""Package discovery; everything else about the distribution is in pyproject.toml.

The packages are found, never listed, so a new folder of modules under fedaux/ ships without an edit
here. Two things keep this in a setup.py rather than in pyproject.toml's declarative
``[tool.setuptools.packages.find]``:

* the repository keeps ``callbacks/`` at the top level but installs it as ``fedaux.callbacks`` (so no
  top-level ``callbacks`` package clashes with a user's own); ``find`` names packages after their
  folders and has no way to put them under a prefix, so that tree is found on its own and renamed;
* some folders are implicit namespace packages (``fedaux/federated`` has no ``__init__.py``), so the
  search must be namespace-aware (``find_namespace_packages``); a plain ``find_packages`` would drop
  fedaux.federated and everything below it. The namespace search also counts data folders
  (``fedaux/data/embedded``) as packages, which is what setuptools expects (it warns about an
  importable folder missing from ``packages`` otherwise); only ``__pycache__`` folders are left out.
"""

from pathlib import Path

from setuptools import find_namespace_packages, setup

HERE = Path(__file__).resolve().parent
IGNORED = ["__pycache__", "*.__pycache__", "*.__pycache__.*", "__pycache__.*"]


def discover(root: str, name: str) -> list[str]:
    """``name`` and every package below it, for the source tree at ``root`` (relative to this file)."""
    return [name] + [f"{name}.{sub}" for sub in find_namespace_packages(where=str(HERE / root), exclude=IGNORED)]


# The longest matching prefix in package_dir wins, so subpackages of callbacks/ follow it too.
PACKAGE_DIR = {"fedaux": "fedaux", "fedaux.callbacks": "callbacks"}
PACKAGES = sorted({pkg for name, root in PACKAGE_DIR.items() for pkg in discover(root, name)})

setup(packages=PACKAGES, package_dir=PACKAGE_DIR)
