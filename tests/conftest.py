"""Shared fixtures: the real data in ../shared (tests skip with a reason when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKETCHKIT_SHARED", ROOT.parent / "shared"))
SKETCHRNN = SHARED / "data" / "sketchrnn"
MAGENTA_GEN = SHARED / "data" / "magenta-gen"
QUICKDRAW = SHARED / "data" / "quickdraw"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (tests read real data from ../shared)")
    return path


@pytest.fixture(scope="session")
def sheep_npz() -> Path:
    return need(SKETCHRNN / "aaron_sheep.npz")


@pytest.fixture(scope="session")
def sketchrnn_dir() -> Path:
    return need(SKETCHRNN)


@pytest.fixture(scope="session")
def magenta_gen_dir() -> Path:
    return need(MAGENTA_GEN)


@pytest.fixture(scope="session")
def quickdraw_dir() -> Path:
    return need(QUICKDRAW)


@pytest.fixture(scope="session")
def sheep(sheep_npz: Path):
    from sketchkit.datasets import load_npz

    return load_npz(sheep_npz)
