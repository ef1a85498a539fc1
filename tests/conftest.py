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


def pillow_model_input(source, image_size: int, center_crop: float = 1.0, *, exif: bool = True):
    """The model input of an image file or bytes computed without the code under test: Pillow decodes and
    applies the EXIF orientation (``exif=False`` keeps the stored pixels), numpy crops the centred square,
    Pillow resizes it in float32 with its antialiased bilinear filter, numpy rounds half to even and
    normalizes as (x - 127.5) / 128."""
    import io

    import numpy as np
    from PIL import Image, ImageOps

    image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    image = (ImageOps.exif_transpose(image) if exif else image).convert("RGB")
    pixels = np.asarray(image, np.float32)
    height, width = pixels.shape[:2]
    side = max(1, round(min(height, width) * center_crop))
    top, left = (height - side) // 2, (width - side) // 2
    square = pixels[top:top + side, left:left + side]
    resized = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(square[..., c]), "F")
                                   .resize((image_size, image_size), Image.Resampling.BILINEAR))
                        for c in range(3)], axis=-1)
    return ((np.clip(np.round(resized), 0, 255) - 127.5) / 128).astype(np.float32)


@pytest.fixture(scope="session")
def pillow_input():
    """:func:`pillow_model_input`, the independent reference for ``arcface.data.preprocess.model_input``."""
    return pillow_model_input
