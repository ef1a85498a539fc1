"""Shared fixtures: where the real faces are, and the bundled sample."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample" / "orl"
SHARED_FACES = Path(os.environ.get("ARCFACE_SHARED_FACES", REPO.parent / "shared" / "data" / "faces"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: Set by .ci/run: a skip fails the run unless its reason starts with one of these (reason → why CI may see it).
STRICT_SKIPS_ENV = "ARCFACE_STRICT_SKIPS"
ALLOWED_SKIPS = {
    "with a GPU the GPUs are the devices": "the CPU-device case of test_precision cannot run where TensorFlow "
                                           "sees a GPU (a GPU-equipped CI machine)",
}


def pytest_collection_modifyitems(config, items):
    """A test that reads ../shared is marked ``shared`` by the fixture it uses, so no marker can be forgotten."""
    for item in items:
        if {"shared_faces", "lfw_dir"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.shared)


def _skip_reason(report) -> str:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return reason.removeprefix("Skipped: ")


def pytest_sessionfinish(session, exitstatus):
    """Under ARCFACE_STRICT_SKIPS=1 every skip must be on :data:`ALLOWED_SKIPS`: a broken install, a missing
    ../shared or an unbuilt image otherwise turns tests into skips and a run green."""
    if os.environ.get(STRICT_SKIPS_ENV) != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = [r for r in (reporter.stats.get("skipped", []) if reporter else []) if not hasattr(r, "wasxfail")]
    unexpected = [r for r in skipped if not _skip_reason(r).startswith(tuple(ALLOWED_SKIPS))]
    if unexpected:
        lines = "\n".join(f"  {r.nodeid}: {_skip_reason(r)}" for r in unexpected)
        reporter.write_line(f"\n{STRICT_SKIPS_ENV}=1: {len(unexpected)} test(s) skipped for a reason not on "
                            f"tests/conftest.py's ALLOWED_SKIPS; make them run (or fail), or allow the reason "
                            f"there with why:\n{lines}", red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
