"""Shared fixtures: the real embedded flows, a shrunken real config, and raw-folder builders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
SHARED_RAW = REPO.parent / "shared" / "data" / "ucdavis-quic-script"


@pytest.fixture(scope="session")
def embedded_flows():
    from fedaux.data.flows import FlowCollection

    return FlowCollection.load()


@pytest.fixture
def shared_raw() -> Path:
    if not SHARED_RAW.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    return SHARED_RAW


def write_flow(path: Path, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


def good_rows(n: int = 20, step: float = 0.5) -> list[str]:
    return [f"{1500000000 + i * step:.6f}\t{i * step:g}\t{100 + i}\t{i % 2}" for i in range(n)]


@pytest.fixture
def raw_folder(tmp_path: Path) -> Path:
    """A small valid raw tree: two classes, three flows each."""
    root = tmp_path / "raw"
    for cls in ("alpha", "beta"):
        for k in range(1, 4):
            write_flow(root / cls / f"{cls}-{k}.txt", good_rows(20 + k, step=0.1 * k))
    return root


@pytest.fixture
def small_cfg(tmp_path: Path):
    """The real conf/quic.yaml, shrunk: 2 base stations under 2 edge servers, 1 round, few samples."""
    from fedaux.config import load_config

    return load_config(
        REPO / "conf" / "quic.yaml",
        [
            f"output_dir={tmp_path / 'outputs'}",
            "data.subflows_per_flow=4",
            "federated.rounds=1",
            "federated.base_stations=2",
            "federated.edge_servers=2",
            "logging.progress=false",
            "logging.energy=false",
            "logging.plots=false",
        ],
    )


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A run of the real conf/quic.yaml, shrunk to 3 rounds of 2 base stations: trained once per
    session for the tests that use a trained model (inference, streaming)."""
    from fedaux.config import load_config
    from fedaux.train import run

    tmp = tmp_path_factory.mktemp("run")
    cfg = load_config(REPO / "conf" / "quic.yaml", [
        f"output_dir={tmp}", "federated.rounds=3", "federated.base_stations=2", "federated.edge_servers=1",
        "data.subflows_per_flow=16",  # about 0.8 held-out accuracy: a model that tells classes apart
        "logging.progress=false", "logging.energy=false", "logging.plots=false", "logging.wandb.mode=disabled"])
    return run(cfg)
