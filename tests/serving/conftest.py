"""A small exported model (untrained TinyFaceNet, with an evaluated threshold on its card) for the serving tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from arcface import artifacts
from arcface.config import TrainConfig
from arcface.contracts import KFOLD_MEAN, EvaluationDir, EvaluationSummary

IMAGE_SIZE = 64
THRESHOLD = 0.5


def sample_faces(sample_dir: Path, split: str = "validation") -> list[str]:
    return sorted(str(p) for p in (sample_dir / split).rglob("*.pgm"))


def make_export(folder: Path, sample_dir: Path, seed: int = 0) -> Path:
    """Train nothing: build, save and export a tiny model whose card carries an evaluated threshold."""
    import keras

    from arcface.export import export
    from arcface.models import build_models

    keras.utils.set_random_seed(seed)
    run = folder / "run"
    run.mkdir(parents=True)
    config = TrainConfig(backbone="TinyFaceNet", image_size=IMAGE_SIZE, embedding_size=32, n_classes=4)
    training_model, embedding_model = build_models(config)
    artifacts.save_keras(training_model, run / artifacts.TRAINING_MODEL_FILE)
    artifacts.save_keras(embedding_model, run / artifacts.EMBEDDING_MODEL_FILE)
    config.save(run / artifacts.CONFIG_FILE)
    artifacts.write_json(run / artifacts.METADATA_FILE, {
        "class_names": ["a", "b", "c", "d"], "manifest_sha256": "x", "image_size": IMAGE_SIZE, "center_crop": 1.0})
    EvaluationDir.write(run, EvaluationSummary(
        verification_accuracy=0.9, verification_accuracy_kind=KFOLD_MEAN, threshold=THRESHOLD, auc=0.9, eer=0.1,
        genuine_pairs=100, impostor_pairs=100, flip_tta=True))
    out = folder / "export"
    export(run, out, formats=["saved_model", "keras"], metrics_path=str(run / "metrics.json"),
           check_images=sample_faces(sample_dir)[:2])
    return out


@pytest.fixture(scope="session")
def export_dir(sample_dir, tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("serving"), sample_dir)
