"""Dataset validation (the pipeline's first step) and the tf.data input pipeline.

``validate_dataset``/``run_validation`` and the manifest need only Pillow; the TF parts (``make_dataset``,
``model_input``, ``face_pixels``) import TensorFlow on first use, so the validation step starts fast.

Only the manifest is imported here: importing any ``arcface.data.*`` module runs this file first, and
``validate`` imports :mod:`arcface.contracts`, which imports the manifest (the layers are in :mod:`arcface`):
importing ``validate`` here would be a cycle. The other names are looked up in their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from arcface.data.manifest import DataError, Manifest, ManifestRow

if TYPE_CHECKING:
    from arcface.data import preprocess
    from arcface.data.input import make_dataset
    from arcface.data.preprocess import (
        apply_orientation,
        crop_and_resize,
        decode_image,
        exif_orientation,
        face_pixels,
        model_input,
        normalize,
    )
    from arcface.data.validate import (
        CODES,
        Finding,
        ValidationResult,
        render_markdown,
        resolve_roots,
        run_validation,
        validate_dataset,
    )

_LAZY = {
    **dict.fromkeys(("CODES", "Finding", "ValidationResult", "render_markdown", "resolve_roots", "run_validation",
                     "validate_dataset"), "arcface.data.validate"),
    "make_dataset": "arcface.data.input",
    "augment_image": "arcface.data.input",
    "decode_image": "arcface.data.preprocess",
    "normalize": "arcface.data.preprocess",
    "crop_and_resize": "arcface.data.preprocess",
    "apply_orientation": "arcface.data.preprocess",
    "exif_orientation": "arcface.data.preprocess",
    "face_pixels": "arcface.data.preprocess",
    "model_input": "arcface.data.preprocess",
}

__all__ = [
    "exif_orientation", "face_pixels", "model_input",  # from encoded bytes to the model's input
    "CODES", "DataError", "Finding", "Manifest", "ManifestRow", "ValidationResult", "apply_orientation",
    "augment_image", "crop_and_resize", "decode_image", "make_dataset", "normalize", "preprocess",
    "render_markdown",
    "resolve_roots", "run_validation", "validate_dataset",
]


def __getattr__(name: str) -> Any:
    if name == "preprocess":  # the module (model_input, decode_image, ...), imported on first use
        return importlib.import_module("arcface.data.preprocess")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'arcface.data' has no attribute {name!r}")
