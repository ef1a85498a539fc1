"""One model-input spec (arcface.model_input.ModelInput): written once into a run's metadata.json and an export's
card, read by read_model_input alone, and every entrance embeds a photo the way it says.

The reference is the definition itself: ``preprocess.model_input`` of the photo's bytes at the recorded size and
crop, fed to the Keras model directly, not through any embedder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from arcface import artifacts
from arcface.data.preprocess import model_input as preprocess_input
from arcface.embedding import load_embedder
from arcface.evaluation.evaluate import embed_images
from arcface.mlops.gallery import load_model
from arcface.model_input import ModelInput, read_model_input
from tests.data.test_align_entrances import SIZE, pixel_model

CROP = 0.5


@pytest.fixture(scope="module")
def photos(sample_dir) -> list[str]:
    return [str(sample_dir / "train" / f"s{i}" / "1.pgm") for i in (1, 2, 3)]


def reference(model_file: str, photos: list[str], crop: float) -> np.ndarray:
    model = artifacts.load_keras(model_file)
    batch = np.stack([preprocess_input(tf.constant(Path(p).read_bytes()), SIZE, crop).numpy() for p in photos])
    rows = np.asarray(model(batch, training=False), np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def write_metadata(folder: Path, **fields) -> None:
    (folder / "metadata.json").write_text(json.dumps({"image_size": SIZE, **fields}))


def test_the_input_section_is_what_every_entrance_embeds_with(tmp_path, photos):
    model_file = pixel_model(tmp_path / "run", None)
    spec = ModelInput(SIZE, CROP, "none")
    write_metadata(tmp_path / "run", input=spec.to_dict())
    assert read_model_input(tmp_path / "run") == spec
    expected = reference(model_file, photos, CROP)
    embedder = load_embedder(model_file)
    assert embedder.model_input == spec
    np.testing.assert_allclose(embedder.embed(photos), expected, atol=1e-5)
    np.testing.assert_allclose(load_model(model_file).embedder.embed(photos), expected, atol=1e-5)
    model = artifacts.load_keras(model_file)
    np.testing.assert_allclose(embed_images(model, photos, SIZE, CROP, flip_tta=False), expected, atol=1e-5)
    # Another crop in the section is another input: the entrances follow it, not a default.
    assert not np.allclose(reference(model_file, photos, 1.0), expected, atol=1e-3)


def test_a_card_wins_over_the_metadata_and_carries_the_evaluated_threshold(tmp_path):
    pixel_model(tmp_path / "export", None)
    write_metadata(tmp_path / "export", input=ModelInput(SIZE, 1.0).to_dict())
    card = {"schema_version": 1, "input": {**ModelInput(SIZE, CROP, "mtcnn").to_dict(), "channels": 3}}
    (tmp_path / "export" / "model_card.json").write_text(json.dumps(card))
    assert read_model_input(tmp_path / "export") == ModelInput(SIZE, CROP, "mtcnn")


def test_folders_written_before_the_section_read_the_same(tmp_path):
    pixel_model(tmp_path / "old", {"method": "mtcnn", "image_size": SIZE})
    write_metadata(tmp_path / "old", center_crop=CROP, alignment={"method": "mtcnn"})
    assert read_model_input(tmp_path / "old") == ModelInput(SIZE, CROP, "mtcnn")
    bare = tmp_path / "bare"
    bare.mkdir()
    assert read_model_input(bare, image_size=SIZE, center_crop=0.8) == ModelInput(SIZE, 0.8, "none")
    with pytest.raises(ValueError, match="records no input size"):
        read_model_input(bare)


def test_an_unknown_alignment_is_refused():
    with pytest.raises(ValueError, match="alignment 'dlib' is unknown"):
        ModelInput(SIZE, 1.0, "dlib")
    assert dataclasses.asdict(ModelInput(SIZE)) == ModelInput(SIZE).to_dict()


def test_training_and_export_write_the_section(tmp_path, sample_dir):
    """A real (tiny) run: its metadata's section is what the export's card carries, with the evaluation's threshold."""
    from arcface.contracts import ExportDir
    from arcface.data import run_validation
    from arcface.export import export
    from arcface.train import train
    from tests.train.conftest import tiny_config

    manifest = run_validation(str(sample_dir / "train"), str(sample_dir / "validation"), str(tmp_path / "v")).manifest
    run = tmp_path / "run"
    train(tiny_config(run, epochs=1, center_crop=0.9, n_classes=10, align="none"), manifest, verbose=0)
    written = json.loads((run / "metadata.json").read_text())["input"]
    assert ModelInput.from_dict(written) == ModelInput(48, 0.9, "none") == read_model_input(run)
    card = export(run, tmp_path / "export", formats=["keras"])
    assert ModelInput.from_dict(card["input"]) == ModelInput(48, 0.9, "none")
    assert read_model_input(tmp_path / "export") == ModelInput.from_dict(ExportDir.read_card(tmp_path / "export")["input"])
