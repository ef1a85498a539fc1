"""Builders for small image trees: every kind of bad input, made with Pillow in tmp_path."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def asymmetric_rgb(width: int = 64, height: int = 48) -> np.ndarray:
    """An image whose every flip and rotation differs: dark left, bright right, a red block top-left."""
    a = np.zeros((height, width, 3), np.uint8)
    a[:, width // 2:] = 220
    a[: height // 3, : width // 4] = (255, 0, 0)
    a[height - 6:, :] += 20
    return a


def save(path: Path, image: Image.Image | np.ndarray, fmt: str | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image.save(path, fmt, **kwargs)
    return path


def jpeg_bytes(image: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=95, **kwargs)
    return buf.getvalue()


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root (links not followed): type, size, mtime and, for files, the sha256."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            digest = ""
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            link = os.readlink(p) if os.path.islink(p) else b""
            state[p] = (st.st_mode, st.st_size, st.st_mtime_ns, digest, link)
    return state


@pytest.fixture
def orl_tree(tmp_path, sample_dir) -> Path:
    """A copy of the bundled ORL sample (train/ and validation/, s1..s10)."""
    root = tmp_path / "data"
    shutil.copytree(sample_dir, root)
    return root


@pytest.fixture(scope="session")
def kit():
    """The helpers above, as a fixture (test modules here are not a package, so they cannot import them)."""
    import types

    return types.SimpleNamespace(asymmetric_rgb=asymmetric_rgb, save=save, jpeg_bytes=jpeg_bytes, snapshot=snapshot)
