"""The same alignment at every entrance: `arcface embed/compare/search` align photos when the model records
that it was trained on aligned crops, a flag overrides it, and the model card states the input contract."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from arcface.embedding import EmbeddingError, compare_command, load_embedder
from arcface.export import input_contract
from tests.data.test_align import scene

SIZE = 64


def pixel_model(folder, alignment: dict | None):
    """A stand-in embedding model whose cosine similarity is the correlation of the 4x-downsampled input
    pixels, saved as model.keras beside a metadata.json recording ``alignment`` (as training writes it)."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.AveragePooling2D(4)(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.LayerNormalization(center=False, scale=False)(x)  # mean 0: cosine = correlation
    os.makedirs(folder, exist_ok=True)
    keras.Model(inputs, outputs).save(os.path.join(folder, "model.keras"))
    metadata = {"image_size": SIZE, "center_crop": 1.0}
    if alignment is not None:
        metadata["alignment"] = alignment
    with open(os.path.join(folder, "metadata.json"), "w", encoding="utf-8") as f:
        json.dump(metadata, f)
    return os.path.join(folder, "model.keras")


@pytest.fixture(scope="module")
def photos(sample_dir, tmp_path_factory):
    """An ORL face as it is, and the same face pasted into a scene at 1.5x, rotated 20 degrees."""
    folder = tmp_path_factory.mktemp("photos")
    face_path = sample_dir / "train" / "s1" / sorted(os.listdir(sample_dir / "train" / "s1"))[0]
    face = np.asarray(Image.open(face_path).convert("RGB"))
    Image.fromarray(face).save(folder / "face.png")
    Image.fromarray(scene([(face, 1.5, 20.0, (300, 150))])).save(folder / "scene.png")
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(folder / "blank.png")
    return folder


def similarity(embedder, photos) -> float:
    a, b = embedder.embed([str(photos / "face.png"), str(photos / "scene.png")])
    return float(a @ b)


def test_a_model_trained_on_aligned_crops_aligns_photos(photos, tmp_path):
    model = pixel_model(tmp_path / "aligned_model", {"method": "mtcnn", "image_size": SIZE})
    embedder = load_embedder(model)
    assert embedder.align == "mtcnn"
    aligned = similarity(embedder, photos)
    whole = similarity(load_embedder(model, align="none"), photos)  # the flag overrides the metadata
    assert aligned > 0.6 and aligned > whole + 0.5, (aligned, whole)  # borders differ: black vs the scene


def test_a_model_without_alignment_reads_whole_images_unless_told(photos, tmp_path):
    model = pixel_model(tmp_path / "plain_model", None)  # trained before alignment, or on pre-cropped faces
    assert load_embedder(model).align == "none"
    assert load_embedder(model, align="mtcnn").align == "mtcnn"
    with pytest.raises(EmbeddingError, match="--align='sideways' is unknown"):
        load_embedder(model, align="sideways")


def test_a_photo_without_a_face_is_named(photos, tmp_path, capsys):
    model = pixel_model(tmp_path / "aligned_model", {"method": "mtcnn", "image_size": SIZE})
    with pytest.raises(EmbeddingError, match=r"blank\.png: no_face: .*--align none"):
        compare_command(model, str(photos / "face.png"), str(photos / "blank.png"))
    assert compare_command(model, str(photos / "face.png"), str(photos / "scene.png"), threshold=0.5) == 0
    assert "same (threshold 0.5000, given)" in capsys.readouterr().out


def test_the_card_states_the_input_contract():
    assert input_contract({"method": "none"}, 112).startswith("raw image")
    contract = input_contract({"method": "mtcnn", "image_size": 112}, 112)
    assert contract.startswith("aligned face crop") and "112x112" in contract and "do not detect" in contract


def test_pairs_evaluation_aligns_the_photos_as_the_model_was_trained(sample_dir, tmp_path):
    """A pairs file of raw photos is aligned when the model records alignment; a photo without a face is fed
    whole and named in the metrics (not silently dropped)."""
    from arcface import artifacts
    from arcface.config import TrainConfig
    from arcface.evaluation.evaluate import evaluate
    from arcface.models import build_models

    root = tmp_path / "pairs_root"
    for identity in ("s1", "s2"):
        (root / identity).mkdir(parents=True)
        for i, name in enumerate(sorted(os.listdir(sample_dir / "train" / identity))[:3], start=1):
            face = np.asarray(Image.open(sample_dir / "train" / identity / name).convert("RGB"))
            Image.fromarray(scene([(face, 1.2, 0.0, (100 + 50 * i, 80))])).save(root / identity / f"{identity}_{i:04d}.jpg")
    Image.fromarray(np.full((250, 250, 3), 128, np.uint8)).save(root / "s2" / "s2_0003.jpg")  # no face in it
    (root / "pairs.txt").write_text("1 2\ns1\t1\t2\ns2\t1\t3\ns1\t3\ts2\t1\ns1\t2\ts2\t2\n", encoding="utf-8")
    config = TrainConfig(backbone="TinyFaceNet", image_size=SIZE, n_classes=2, embedding_size=16, seed=1)
    training_model, embedding_model = build_models(config)
    model = tmp_path / "model"
    model.mkdir()
    artifacts.save_keras(training_model, model / artifacts.TRAINING_MODEL_FILE)
    artifacts.save_keras(embedding_model, model / artifacts.EMBEDDING_MODEL_FILE)
    config.save(model / artifacts.CONFIG_FILE)
    artifacts.write_json(model / artifacts.METADATA_FILE, {"class_names": ["s1", "s2"],
                                                           "alignment": {"method": "mtcnn", "image_size": SIZE}})
    result = evaluate(str(model), None, output_dir=str(tmp_path / "eval"), pairs_file=str(root / "pairs.txt"))
    verification = result["verification"]
    assert verification["alignment"] == "mtcnn" and verification["pairs"] == 4
    assert list(verification["not_aligned"]) == [str(root / "s2" / "s2_0003.jpg")]
    assert verification["not_aligned"][str(root / "s2" / "s2_0003.jpg")].startswith("no_face")
    plain = evaluate(str(model), None, output_dir=str(tmp_path / "eval2"), pairs_file=str(root / "pairs.txt"),
                     align="none")
    assert plain["verification"]["alignment"] == "none" and plain["verification"]["not_aligned"] == {}
