"""Shared fixtures: where the real faces are, and the bundled sample."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample" / "orl"
SHARED_FACES = Path(os.environ.get("ARCFACE_SHARED_FACES", REPO.parent / "shared" / "data" / "faces"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The 10-identity ORL sample shipped in the repository (train/ and validation/)."""
    return SAMPLE


@pytest.fixture(scope="session")
def shared_faces() -> Path:
    """../shared/data/faces (ORL and LFW); tests that need it skip where a clone has none."""
    if not (SHARED_FACES / "orl_faces").is_dir():
        pytest.skip(f"real face set not found at {SHARED_FACES} (only the project's own checkout has "
                    "../shared/data/faces; set ARCFACE_SHARED_FACES to point elsewhere)")
    return SHARED_FACES


@pytest.fixture(scope="session")
def lfw_dir(shared_faces) -> Path:
    path = shared_faces / "lfw_deepfunneled"
    if not (path / "pairsDevTrain.txt").is_file():
        pytest.skip(f"LFW deep-funneled images with pairsDevTrain.txt not found under {path}")
    return path
