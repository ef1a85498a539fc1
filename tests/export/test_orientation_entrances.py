"""One EXIF-rotated real face through every entrance: each embeds it as it embeds the upright original.

The entrances: the training dataset over a manifest, the evaluation's image loading, the export's parity
path, the SavedModel's bytes signature and ``Embedder`` / ``arcface embed``. The rotated files are JPEGs
whose pixels are the upright face rotated/flipped, with the EXIF orientation tag that turns them upright
again. To make "the same embedding" exact, the face is a real ORL face averaged over 8x8 blocks: a grey JPEG
at quality 100 stores such an image losslessly, so the rotated file decodes to exactly the rotated pixels.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from arcface import artifacts
from arcface import export as export_mod
from arcface.cli import main as cli
from arcface.config import TrainConfig
from arcface.data import make_dataset, validate_dataset
from arcface.embedding import load_embedder
from arcface.evaluation.evaluate import embed_images

IMAGE_SIZE = 64
CENTER_CROP = 0.9
SAME = 1e-5  # the embeddings must agree to float32 rounding: the pixels fed to the model are identical
# Pillow's exif_transpose for each orientation; the stored pixels are made with the inverse transform.
UNDO = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90}
INVERSE = {Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270}


def blocky_face(sample_dir: Path) -> Image.Image:
    """A real ORL face (112 x 92, cropped to 112 x 88), each 8x8 block replaced by its mean level."""
    face = np.asarray(Image.open(sample_dir / "validation" / "s4" / "9.pgm").convert("L"))[:, 2:90]
    blocks = face.reshape(14, 8, 11, 8).astype(np.float64).mean(axis=(1, 3)).round().astype(np.uint8)
    return Image.fromarray(np.kron(blocks, np.ones((8, 8), np.uint8)))


def jpeg(image: Image.Image, orientation: int | None) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(buf, "JPEG", quality=100, exif=exif.tobytes())
    return buf.getvalue()


@pytest.fixture(scope="module")
def faces(sample_dir, tmp_path_factory) -> dict[str, Path]:
    """upright.jpg, o1.jpg .. o8.jpg (stored rotated, tagged upright) and o6-untagged.jpg (o6's pixels, no tag),
    as one identity's train/ folder of a dataset tree."""
    root = tmp_path_factory.mktemp("faces")
    upright = blocky_face(sample_dir)
    files = {"upright": jpeg(upright, None), "o1": jpeg(upright, 1)}
    for orientation, undo in UNDO.items():
        files[f"o{orientation}"] = jpeg(upright.transpose(INVERSE.get(undo, undo)), orientation)
    files["o6-untagged"] = jpeg(upright.transpose(INVERSE[UNDO[6]]), None)
    (root / "train" / "person").mkdir(parents=True)
    paths = {name: root / "train" / "person" / f"{name}.jpg" for name in files}
    for name, data in files.items():
        paths[name].write_bytes(data)
    (root / "validation" / "person").mkdir(parents=True)  # validation needs a face of its own (no leakage)
    (root / "validation" / "person" / "other.pgm").write_bytes((sample_dir / "validation" / "s4" / "10.pgm").read_bytes())
    # The construction, checked with Pillow alone: each tagged file's upright view is the original exactly.
    original = np.asarray(upright)
    for name in files:
        view = np.asarray(ImageOps.exif_transpose(Image.open(paths[name])))
        assert np.array_equal(view, original) == (name != "o6-untagged"), name
    return paths


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A training run's folder with a tiny untrained model."""
    from arcface.models import build_models

    path = tmp_path_factory.mktemp("run")
    config = TrainConfig(backbone="TinyFaceNet", image_size=IMAGE_SIZE, embedding_size=32, n_classes=1,
                         center_crop=CENTER_CROP)
    training_model, embedding_model = build_models(config)
    artifacts.save_keras(training_model, path / artifacts.TRAINING_MODEL_FILE)
    artifacts.save_keras(embedding_model, path / artifacts.EMBEDDING_MODEL_FILE)
    config.save(path / artifacts.CONFIG_FILE)
    artifacts.write_json(path / artifacts.METADATA_FILE, {
        "class_names": ["person"], "manifest_sha256": "x", "image_size": IMAGE_SIZE, "embedding_size": 32,
        "center_crop": CENTER_CROP, "normalization": artifacts.NORMALIZATION})
    return path


def _by_name(names: list[str], embeddings: np.ndarray) -> dict[str, np.ndarray]:
    return dict(zip(names, np.asarray(embeddings, np.float64), strict=True))


def test_every_entrance_embeds_the_rotated_face_as_the_upright_one(faces, model_dir, tmp_path, pillow_input):
    model = artifacts.load_keras(model_dir / artifacts.EMBEDDING_MODEL_FILE)
    names = list(faces)
    paths = [str(faces[n]) for n in names]
    encoded = [faces[n].read_bytes() for n in names]

    manifest = validate_dataset(str(faces["upright"].parents[2] / "train"),
                                str(faces["upright"].parents[2] / "validation")).manifest
    rows = manifest.split("train")
    assert {r.path: r.orientation for r in rows}["person/o6.jpg"] == 6  # validation read the tag with Pillow
    train_images, _ = next(iter(make_dataset(manifest, "train", image_size=IMAGE_SIZE, batch_size=len(rows),
                                             training=False, center_crop=CENTER_CROP)))
    export_dir = tmp_path / "exported"
    export_mod.export(model_dir, export_dir, formats=["saved_model"], check_images=paths)
    serving = tf.saved_model.load(str(export_dir / "saved_model")).signatures["serving_default"]
    cli_output = tmp_path / "embeddings.npy"
    assert cli(["embed", "--model", str(model_dir), *paths, "--output", str(cli_output)]) == 0

    entrances = {
        "training dataset": _by_name([Path(r.path).stem for r in rows], model(train_images, training=False)),
        "evaluation": _by_name(names, embed_images(model, paths, IMAGE_SIZE, CENTER_CROP, flip_tta=False)),
        "export parity": _by_name(names, model(export_mod._decode_batch(encoded, names, IMAGE_SIZE, CENTER_CROP),
                                               training=False)),
        "saved_model bytes": _by_name(names, serving(images=tf.constant(encoded))["embedding"].numpy()),
        "Embedder": _by_name(names, load_embedder(model_dir).embed(paths)),
        "arcface embed": _by_name(names, np.load(cli_output)),
    }
    # The independent reference: Pillow's upright view, cropped/resized/normalized in the test, into Keras.
    reference = np.asarray(model(pillow_input(str(faces["upright"]), IMAGE_SIZE, CENTER_CROP)[None]))[0]
    for entrance, embedding in entrances.items():
        assert np.abs(embedding["upright"] - reference).max() <= SAME, entrance
        for name in [n for n in names if n.startswith("o") and n != "o6-untagged"]:
            assert np.abs(embedding[name] - embedding["upright"]).max() <= SAME, (entrance, name)
        # Without the tag the same pixels are a sideways face: an entrance that ignored EXIF would fail above.
        assert np.abs(embedding["o6-untagged"] - embedding["upright"]).max() > 100 * SAME, entrance
