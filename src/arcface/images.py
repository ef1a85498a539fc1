"""The one place the container image names and tags are defined.

Every tag is ``<repository>/<flavor>:<arcface.__version__>`` (never ``:latest``), so a pipeline compiled
from a given release always names the images built from that same release. The repository defaults to
``arcface-kfp`` and is overridden by the environment variable ``ARCFACE_IMAGE_REPOSITORY`` (for example
``registry.example.org/ml/arcface-kfp`` when the images are pushed somewhere a cluster can pull them).

``python -m arcface.images`` prints the tags as ``NAME=value`` lines, which is how ``docker/build.sh``
reads them. This module imports nothing beyond the standard library and ``arcface.__version__``.
"""

from __future__ import annotations

import os

from arcface import __version__

DEFAULT_REPOSITORY = "arcface-kfp"
REPOSITORY_ENV = "ARCFACE_IMAGE_REPOSITORY"

#: flavor -> what the image holds
FLAVORS: dict[str, str] = {
    "cpu": "every component: TensorFlow (CPU), kfp, ONNX export (tf2onnx/onnx/onnxruntime); `arcface serve` (kserve, faiss)",
    "gpu": "training on a GPU: the CPU image's packages on a TensorFlow GPU base image",
    "validate": "data validation only: numpy, pillow, pyyaml (no TensorFlow)",
}


def repository() -> str:
    """Image repository prefix, without a trailing slash."""
    repo = os.environ.get(REPOSITORY_ENV, "").strip() or DEFAULT_REPOSITORY
    return repo.rstrip("/")


def _tag(flavor: str, suffix: str = "") -> str:
    return f"{repository()}/{flavor}:{__version__}{suffix}"


def cpu_image() -> str:
    """CPU component image, e.g. ``arcface-kfp/cpu:0.1.0``."""
    return _tag("cpu")


def gpu_image() -> str:
    """GPU training image, e.g. ``arcface-kfp/gpu:0.1.0``."""
    return _tag("gpu")


def validate_image() -> str:
    """Validation-only image without TensorFlow, e.g. ``arcface-kfp/validate:0.1.0``."""
    return _tag("validate")


def base_image() -> str:
    """Local debootstrap base image the others are built on, e.g. ``arcface-kfp/base:0.1.0-bookworm``."""
    return _tag("base", "-bookworm")


def all_images() -> dict[str, str]:
    """Every tag this module defines, by name."""
    return {
        "cpu": cpu_image(),
        "gpu": gpu_image(),
        "validate": validate_image(),
        "base": base_image(),
    }


def main() -> None:
    print(f"VERSION={__version__}")
    for name, tag in all_images().items():
        print(f"{name.upper()}_IMAGE={tag}")


if __name__ == "__main__":
    main()
