"""The layout of a trained-model folder, and loading it back safely.

A model folder (the training step's ``save_path``, the KFP ``Model`` artifact) holds::

    config.yaml               the resolved TrainConfig
    metadata.json             class names, manifest hash, epochs done, input size and normalization, version
    training_model.keras      [image, label] -> logits
    embedding_model.keras     image -> unit-length embedding
    best/                     the same two .keras files at the best validation accuracy
    checkpoints/              tf.train checkpoints to resume from (model, optimizer, epoch, step)
    logs/                     training.csv and TensorBoard events
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

from arcface import atomic
from arcface.config import TrainConfig, load_yaml
from arcface.contracts import ModelDir
from arcface.precision import float32_model

# The folder's file names are defined by arcface.contracts.ModelDir; these names are kept for the trainer.
CONFIG_FILE = ModelDir.CONFIG_FILE
METADATA_FILE = ModelDir.METADATA_FILE
TRAINING_MODEL_FILE = ModelDir.TRAINING_MODEL_FILE
EMBEDDING_MODEL_FILE = ModelDir.EMBEDDING_MODEL_FILE
BEST_DIR = ModelDir.BEST_DIR
CHECKPOINT_DIR = ModelDir.CHECKPOINT_DIR
LOG_DIR = ModelDir.LOG_DIR

# Images are fed to every model as (pixel - 127.5) / 128, RGB, channels last.
NORMALIZATION = {"mean": 127.5, "scale": 1 / 128, "channels": "RGB", "layout": "NHWC"}


class ModelLoadError(ValueError):
    """A model folder or file is missing, broken, or unsafe to load."""


@dataclasses.dataclass
class TrainedModel:
    embedding_model: Any
    config: Any
    metadata: dict
    training_model: Any = None
    path: str = ""

    @property
    def image_size(self) -> int:
        return int(self.embedding_model.input_shape[1])

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata.get("class_names", []))


# The atomic writer is the one every step output uses; re-exported here for the model folder's writers.
write_json = atomic.write_json
remove_stale_temporaries = atomic.remove_stale_temporaries


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's content, read in blocks (models and exports can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_keras(model, path: str | os.PathLike) -> None:
    """Save a .keras file atomically."""
    with atomic.replacing(path) as tmp:
        model.save(tmp)


def load_keras(path: str | os.PathLike):
    """Load a .keras file with safe mode on: a file that carries code (a Lambda layer) is refused.

    The model computes in float32 whatever policy it was saved under (one saved by hand under mixed_bfloat16,
    or by the trainer before it saved float32 copies): evaluation, export and serving compute as they always
    did, and TFLite and ONNX get float32 graphs.
    """
    import keras

    # Here, not at the top: the model folder's layout and metadata are read where TensorFlow is not installed.
    from arcface.models import CUSTOM_OBJECTS

    path = str(path)
    if not os.path.exists(path):
        raise ModelLoadError(f"model file {path} does not exist")
    try:
        return float32_model(
            keras.saving.load_model(path, custom_objects=CUSTOM_OBJECTS, compile=False, safe_mode=True))
    except ValueError as e:
        if "safe_mode" in str(e) or "lambda" in str(e).lower():
            raise ModelLoadError(
                f"refusing to load {path}: it contains code (a Lambda layer or a pickled function) that would run "
                "on load. Rebuild the model from registered layers, or re-export it with this package.") from None
        raise ModelLoadError(f"cannot load {path}: {e}") from None


def load_model_dir(path: str | os.PathLike, with_training_model: bool = False, best: bool = False) -> TrainedModel:
    """Load a trained-model folder (or a folder holding only ``embedding_model.keras``)."""
    path = str(path)
    if os.path.isfile(path) and path.endswith(".keras"):
        return TrainedModel(embedding_model=load_keras(path), config=TrainConfig(), metadata={}, path=path)
    if not os.path.isdir(path):
        raise ModelLoadError(f"model folder {path} does not exist; pass the save_path of a training run")
    folder = os.path.join(path, BEST_DIR) if best and os.path.isdir(os.path.join(path, BEST_DIR)) else path
    embedding_file = os.path.join(folder, EMBEDDING_MODEL_FILE)
    if not os.path.exists(embedding_file):
        raise ModelLoadError(f"{path} holds no {EMBEDDING_MODEL_FILE}: train a model into it first "
                             "(arcface train --save_path ...)")
    config_file = os.path.join(path, CONFIG_FILE)
    config = load_yaml(config_file) if os.path.exists(config_file) else TrainConfig()
    metadata = ModelDir.read_metadata(path)
    training_model = None
    if with_training_model:
        training_model = load_keras(os.path.join(folder, TRAINING_MODEL_FILE))
    return TrainedModel(embedding_model=load_keras(embedding_file), config=config, metadata=metadata,
                        training_model=training_model, path=path)
