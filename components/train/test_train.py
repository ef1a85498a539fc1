"""train_model: its Python function with fake artifacts, then the component through kfp.local (slow: TF)."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from kfp import dsl, local

from arcface import artifacts
from arcface.config import TrainConfig
from components.train import train_model

SAMPLE = Path(__file__).resolve().parents[2] / "sample" / "orl"  # tests/conftest.py's sample_dir
TINY = TrainConfig(n_classes=3, backbone="TinyFaceNet", image_size=48, embedding_size=32, epochs=1,
                   batch_size=8, warmup_epochs=0.0, steps_per_epoch=2)


@functools.cache
def validated_faces() -> str:
    """Three sample identities and their manifest folder (the validate step's Dataset artifact)."""
    from arcface.data import run_validation

    root = tempfile.mkdtemp(prefix="arcface-components-")
    for split in ("train", "validation"):
        for identity in ("s1", "s2", "s3"):
            shutil.copytree(SAMPLE / split / identity, os.path.join(root, "faces", split, identity))
    run_validation(os.path.join(root, "faces", "train"), os.path.join(root, "faces", "validation"),
                   os.path.join(root, "manifest"), n_classes=3)
    return root


@functools.cache
def tiny_model() -> tuple[str, str]:
    """(manifest folder, model folder) of a one-epoch TinyFaceNet, trained once per test session."""
    root = validated_faces()
    model = dsl.Model(name="model", uri=os.path.join(root, "model"))
    metrics = dsl.Metrics(name="metrics", uri=os.path.join(root, "train-metrics"))
    manifest = dsl.Dataset(name="manifest", uri=os.path.join(root, "manifest"))
    train_model.python_func(config=TINY.to_dict(), manifest=manifest, model=model, metrics=metrics)
    return manifest.path, model.path


@pytest.mark.slow
def test_function_trains_into_the_model_artifact():
    manifest_dir, model_dir = tiny_model()
    for name in ("config.yaml", "metadata.json", "training_model.keras", "embedding_model.keras"):
        assert os.path.isfile(os.path.join(model_dir, name)), name
    assert os.path.isdir(os.path.join(model_dir, "checkpoints"))

    from arcface.data import Manifest, make_dataset

    trained = artifacts.load_model_dir(model_dir)
    assert trained.metadata["epochs_completed"] == TINY.epochs
    assert [h["epoch"] for h in trained.metadata["history"]] == list(range(1, TINY.epochs + 1))
    assert trained.class_names == ["s1", "s2", "s3"]
    faces = make_dataset(Manifest.read(os.path.join(manifest_dir, "manifest.json")), "validation",
                         image_size=TINY.image_size, batch_size=64, training=False)
    images, _ = next(iter(faces))
    embeddings = np.asarray(trained.embedding_model(images, training=False))
    assert embeddings.shape == (images.shape[0], TINY.embedding_size)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-4)
    assert len(np.unique(embeddings.round(4), axis=0)) == len(embeddings), "different faces, different embeddings"


@pytest.mark.slow
def test_function_logs_metrics(tmp_path):
    root = validated_faces()
    model = dsl.Model(name="model", uri=str(tmp_path / "model"))
    metrics = dsl.Metrics(name="metrics", uri=str(tmp_path / "metrics"))
    config = {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v  # ints as JSON floats
              for k, v in TINY.to_dict().items()}
    train_model.python_func(config=config, manifest=dsl.Dataset(name="m", uri=os.path.join(root, "manifest")),
                            model=model, metrics=metrics)
    assert metrics.metadata["epochs_completed"] == 1 and metrics.metadata["steps"] == 2
    assert metrics.metadata["images_per_second"] > 0
    assert model.metadata["backbone"] == "TinyFaceNet" and model.metadata["stopped"] == "completed"


@pytest.mark.slow
def test_a_retry_resumes_from_checkpoint_dir_under_the_run_name(tmp_path):
    """A retried step gets a new, empty model folder; with checkpoint_dir set, the run name (run_id, which the
    pipeline passes as dsl.PIPELINE_JOB_NAME_PLACEHOLDER) is the checkpoint key: the retry resumes, and another run
    starts fresh."""
    root = validated_faces()
    config = {**TINY.to_dict(), "epochs": 2, "checkpoint_dir": str(tmp_path / "pvc")}
    manifest = dsl.Dataset(name="m", uri=os.path.join(root, "manifest"))

    def attempt(name, run_id, **changes):
        model = dsl.Model(name="model", uri=str(tmp_path / name))
        metrics = dsl.Metrics(name="metrics", uri=str(tmp_path / f"{name}-metrics"))
        train_model.python_func(config={**config, **changes}, manifest=manifest, model=model, metrics=metrics,
                                run_id=run_id)
        return model, metrics

    attempt("first", "arcface-training-x7k2p", epochs=1)
    model, metrics = attempt("retry", "arcface-training-x7k2p")
    assert metrics.metadata["steps"] == 4 and model.metadata["checkpoint_key"] == "arcface-training-x7k2p"
    history = artifacts.load_model_dir(model.path).metadata["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    _, other = attempt("other-run", "arcface-training-q9z3m", epochs=1)
    assert other.metadata["steps"] == 2
    assert sorted(os.listdir(tmp_path / "pvc")) == ["arcface-training-q9z3m", "arcface-training-x7k2p"]


@pytest.mark.slow
def test_component_through_the_local_runner(tmp_path):
    root = validated_faces()

    @dsl.pipeline(name="train-only")
    def train_only():
        manifest = dsl.importer(artifact_uri=os.path.join(root, "manifest"), artifact_class=dsl.Dataset)
        train_model(config=TINY.to_dict(), manifest=manifest.output)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    train_only()
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert (run_dir / "train-model" / "model" / "embedding_model.keras").is_file()
