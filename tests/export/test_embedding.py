"""Using a model: load_embedder on every kind of model path, and the embed / compare / search commands."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from arcface import artifacts
from arcface.cli import main as cli
from arcface.config import TrainConfig
from arcface.contracts import KFOLD_MEAN, EvaluationDir, EvaluationSummary
from arcface.data.preprocess import model_input
from arcface.embedding import EmbeddingError, embed_command, load_embedder

IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A training run's folder with a tiny untrained model and an evaluation's metrics.json."""
    from arcface.models import build_models

    path = tmp_path_factory.mktemp("run")
    config = TrainConfig(backbone="TinyFaceNet", image_size=IMAGE_SIZE, embedding_size=32, n_classes=4)
    training_model, embedding_model = build_models(config)
    artifacts.save_keras(training_model, path / artifacts.TRAINING_MODEL_FILE)
    artifacts.save_keras(embedding_model, path / artifacts.EMBEDDING_MODEL_FILE)
    config.save(path / artifacts.CONFIG_FILE)
    artifacts.write_json(path / artifacts.METADATA_FILE, {
        "class_names": ["a", "b", "c", "d"], "manifest_sha256": "x", "image_size": IMAGE_SIZE, "center_crop": 1.0})
    EvaluationDir.write(path, EvaluationSummary(
        verification_accuracy=0.9, verification_accuracy_kind=KFOLD_MEAN, threshold=0.5, auc=0.9, eer=0.1,
        genuine_pairs=100, impostor_pairs=100, flip_tta=True))
    return path


@pytest.fixture(scope="module")
def export_dir(model_dir, sample_dir, tmp_path_factory) -> Path:
    from arcface.export import export

    out = tmp_path_factory.mktemp("exported")
    export(model_dir, out, formats=["saved_model", "keras"], metrics_path=str(model_dir / "metrics.json"),
           check_images=faces(sample_dir)[:4])
    return out


def faces(sample_dir: Path) -> list[str]:
    return sorted(str(p) for p in (sample_dir / "validation").rglob("*.pgm"))


# ---------------------------------------------------------------------------------------------------
def test_every_kind_of_model_path_gives_the_same_embeddings(model_dir, export_dir, sample_dir, tmp_path):
    saved_model_only = tmp_path / "sm"
    shutil.copytree(export_dir / "saved_model", saved_model_only / "saved_model")
    shutil.copy(export_dir / "model_card.json", saved_model_only)
    paths = faces(sample_dir)[:5]
    run = load_embedder(model_dir)
    expected = run.embed(paths, batch_size=2)
    assert expected.shape == (5, 32) and np.allclose(np.linalg.norm(expected, axis=1), 1, atol=1e-5)
    assert run.image_size == IMAGE_SIZE and run.threshold == 0.5 and run.threshold_flip_tta
    for path in (export_dir, export_dir / "model.keras", saved_model_only, saved_model_only / "saved_model"):
        embedder = load_embedder(path)
        assert embedder.threshold == 0.5, path
        np.testing.assert_allclose(embedder.embed(paths), expected, atol=1e-5, err_msg=str(path))
    bare = load_embedder(model_dir / artifacts.EMBEDDING_MODEL_FILE)
    assert bare.image_size == IMAGE_SIZE


def test_flip_tta_is_the_mirror_sum(model_dir, sample_dir):
    embedder = load_embedder(model_dir)
    path = faces(sample_dir)[0]
    flipped = embedder.embed([path], flip_tta=True)[0]
    image = model_input(tf.constant(Path(path).read_bytes()), embedder.image_size, embedder.center_crop).numpy()[None]
    both = embedder.forward(image)[0] + embedder.forward(np.ascontiguousarray(image[:, :, ::-1]))[0]
    np.testing.assert_allclose(flipped, both / np.linalg.norm(both), atol=1e-5)


@pytest.mark.parametrize("suffix", ["npy", "csv", "jsonl"])
def test_embed_writes_each_format(suffix, model_dir, sample_dir, tmp_path, capsys):
    paths = faces(sample_dir)[:3]
    output = tmp_path / f"emb.{suffix}"
    assert cli(["embed", "--model", str(model_dir), *paths, "--output", str(output)]) == 0
    if suffix == "npy":
        embeddings = np.load(output)
    elif suffix == "csv":
        rows = list(csv.reader(output.open()))
        assert rows[0][0] == "path" and [r[0] for r in rows[1:]] == paths
        embeddings = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    else:
        records = [json.loads(line) for line in output.read_text().splitlines()]
        assert [r["path"] for r in records] == paths
        embeddings = np.array([r["embedding"] for r in records])
    assert embeddings.shape == (3, 32)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert "wrote 3 embeddings" in capsys.readouterr().out


def test_embed_expands_folders_and_needs_a_known_format(model_dir, sample_dir, tmp_path):
    output = tmp_path / "out.bin"
    with pytest.raises(EmbeddingError, match="--format npy"):
        embed_command(str(model_dir), [str(sample_dir / "validation" / "s1")], str(output), None)
    assert embed_command(str(model_dir), [str(sample_dir / "validation" / "s1")], str(output), "npy") == 0
    assert np.load(output).shape == (len(list((sample_dir / "validation" / "s1").iterdir())), 32)


def test_compare_same_image_is_same(model_dir, sample_dir, capsys):
    face = faces(sample_dir)[0]
    assert cli(["compare", "--model", str(model_dir), face, face]) == 0
    out = capsys.readouterr().out
    assert "similarity: 1.0000" in out and "same (threshold 0.5000, evaluated)" in out


def test_compare_without_a_threshold_prints_only_the_similarity(model_dir, sample_dir, tmp_path, capsys):
    bare = tmp_path / "model.keras"
    shutil.copy(model_dir / artifacts.EMBEDDING_MODEL_FILE, bare)
    a, b = faces(sample_dir)[:2]
    assert cli(["compare", "--model", str(bare), a, b]) == 0
    captured = capsys.readouterr()
    assert "similarity:" in captured.out and "same" not in captured.out
    assert "no threshold known" in captured.err
    assert cli(["compare", "--model", str(bare), a, a, "--threshold", "0.9"]) == 0
    assert "same (threshold 0.9000, given)" in capsys.readouterr().out


def test_search_ranks_the_probes_identity_first(model_dir, sample_dir, tmp_path, capsys):
    # One image per identity, the probe among them: its identity's centre is the probe itself.
    gallery = tmp_path / "gallery"
    for folder in sorted((sample_dir / "validation").iterdir()):
        (gallery / folder.name).mkdir(parents=True)
        shutil.copy(sorted(folder.iterdir())[0], gallery / folder.name)
    probe = next((gallery / "s3").iterdir())
    assert cli(["search", "--model", str(model_dir), "--gallery", str(gallery), str(probe), "--top_k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("top 3 of 10 identities")
    rank, similarity, identity = lines[1].split()
    assert (rank, identity) == ("1", "s3") and float(similarity) == pytest.approx(1.0, abs=1e-4)
    assert len(lines) == 4


def test_an_unreadable_image_is_named(model_dir, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(EmbeddingError, match=r"broken\.jpg is not a readable image"):
        load_embedder(model_dir).embed([str(broken)])
    assert cli(["embed", "--model", str(model_dir), str(tmp_path / "missing.png"), "-o", str(tmp_path / "e.npy")]) == 2
    assert "missing.png cannot be read" in capsys.readouterr().err


def test_a_model_file_that_carries_code_is_refused(tmp_path, capsys):
    import keras

    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    path = tmp_path / "unsafe.keras"
    model.save(path)
    with pytest.raises(artifacts.ModelLoadError, match="refusing to load"):
        load_embedder(path)
    assert cli(["embed", "--model", str(path), "x.png", "-o", str(tmp_path / "e.npy")]) == 2
    assert "refusing to load" in capsys.readouterr().err


def test_a_folder_without_a_model_is_explained(tmp_path):
    with pytest.raises(EmbeddingError, match="holds no embedding_model.keras"):
        load_embedder(tmp_path)


def test_embed_returns_one_row_per_image_so_it_cannot_skip(model_dir, sample_dir):
    embedder = load_embedder(model_dir)  # a model that does not align: every photo is read whole, none skipped
    paths = faces(sample_dir)[:2]
    with pytest.raises(EmbeddingError, match=r"use embed_many\(\)"):
        embedder.embed(paths, on_no_face="skip")
    result = embedder.embed_many(paths)
    assert result.kept == [0, 1] and result.skipped == [] and result.whole == []
    np.testing.assert_array_equal(result.embeddings, embedder.embed(paths))
