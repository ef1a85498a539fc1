"""The evaluation step end to end, with an untrained TinyFaceNet (fast; the numbers are near chance)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from sklearn import metrics as skm

from arcface import artifacts
from arcface.config import TrainConfig
from arcface.evaluation.evaluate import (
    MAX_CONFUSION_CLASSES,
    EvaluationError,
    _confusion_for_kfp,
    embed_images,
    evaluate,
    validation_dataset,
)
from arcface.evaluation.pairs import MissingImagesError

IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def manifest(sample_dir):
    from arcface.data import validate_dataset

    return validate_dataset(str(sample_dir / "train"), str(sample_dir / "validation")).manifest


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, manifest):
    """A model folder as the training step writes it, with untrained weights."""
    from arcface.models import build_models

    folder = tmp_path_factory.mktemp("model")
    config = TrainConfig(backbone="TinyFaceNet", image_size=IMAGE_SIZE, n_classes=len(manifest.class_names),
                         embedding_size=64, center_crop=0.5, seed=1)
    training_model, embedding_model = build_models(config)
    artifacts.save_keras(training_model, folder / artifacts.TRAINING_MODEL_FILE)
    artifacts.save_keras(embedding_model, folder / artifacts.EMBEDDING_MODEL_FILE)
    config.save(folder / artifacts.CONFIG_FILE)
    artifacts.write_json(folder / artifacts.METADATA_FILE, {"class_names": manifest.class_names,
                                                            "manifest_sha256": manifest.sha256})
    return folder


@pytest.fixture(scope="module")
def trained(model_dir):
    return artifacts.load_model_dir(model_dir, with_training_model=True)


def all_numbers(tree, where="metrics"):
    """(path, value) for every number in a JSON-like tree."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from all_numbers(value, f"{where}.{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from all_numbers(value, f"{where}[{i}]")
    elif isinstance(tree, int | float) and not isinstance(tree, bool):
        yield where, tree


def check_outputs(result: dict, output_dir) -> None:
    """metrics.json holds exactly the returned numbers; the report is self-contained, well-formed SVG."""
    for where, value in all_numbers(result):
        assert math.isfinite(value), where
    with open(output_dir / "metrics.json", encoding="utf-8") as f:
        assert json.load(f) == json.loads(json.dumps(result))
    html = (output_dir / "report.html").read_text(encoding="utf-8")
    assert html.count("<svg") >= 2 and "<script" not in html
    assert "src=" not in html and "href=" not in html  # nothing to fetch: opens offline
    for start in range(html.count("<svg")):  # every inline plot parses as XML
        begin = [i for i in range(len(html)) if html.startswith("<svg", i)][start]
        ET.fromstring(html[begin:html.index("</svg>", begin) + len("</svg>")])
    v = result["verification"]
    assert 0 <= v["auc"] <= 1 and 0 <= v["eer"] <= 1 and 0 <= v["accuracy_mean"] <= 1
    assert len(v["fold_accuracies"]) == 10 and v["accuracy_mean"] == pytest.approx(np.mean(v["fold_accuracies"]))
    roc = result["roc"]
    assert 2 <= len(roc["fpr"]) <= 200 and len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"])
    assert np.all(np.diff(roc["fpr"]) >= 0) and np.all(np.diff(roc["tpr"]) >= 0)
    assert result["throughput"]["images_per_second"] > 0


@pytest.mark.shared
def test_lfw_pairs_end_to_end(lfw_dir, model_dir, manifest, trained, tmp_path):
    # The first 200 matched and 200 mismatched pairs of pairsDevTrain.txt, to keep the test quick.
    lines = (lfw_dir / "pairsDevTrain.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0].strip() == "1100"
    subset = tmp_path / "pairs.txt"
    subset.write_text("\n".join(["200", *lines[1:201], *lines[1101:1301]]), encoding="utf-8")
    out = tmp_path / "out"
    result = evaluate(str(model_dir), manifest, output_dir=str(out), pairs_file=str(subset),
                      pairs_root=str(lfw_dir), batch_size=64)
    check_outputs(result, out)
    v = result["verification"]
    assert (v["genuine_pairs"], v["impostor_pairs"], v["pairs_counts"]["skipped"]) == (200, 200, 0)
    assert v["source"] == "pairs_file" and v["majority_baseline_accuracy"] == 0.5
    # 200 impostor pairs measure FAR down to 1/200: 1e-1 and 1e-2 are numbers, 1e-3 and 1e-4 are not.
    tars = v["tar_at_far"]
    assert 0 <= tars["1e-01"]["tar"] <= 1 and 0 <= tars["1e-02"]["tar"] <= 1
    for key in ("1e-03", "1e-04"):
        assert tars[key]["tar"] is None and "200 impostor pairs" in tars[key]["reason"]

    # Independently: embed the pair images again and score with scikit-learn.
    from arcface.evaluation.pairs import read_pairs

    pairs = read_pairs(subset, lfw_dir)
    paths = sorted({p for pair in pairs for p in (pair.path_a, pair.path_b)})
    embeddings = embed_images(trained.embedding_model, paths, IMAGE_SIZE, center_crop=0.5, flip_tta=True)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    index = {p: i for i, p in enumerate(paths)}
    scores = np.array([embeddings[index[p.path_a]] @ embeddings[index[p.path_b]] for p in pairs])
    same = np.array([p.same for p in pairs])
    assert v["auc"] == pytest.approx(skm.roc_auc_score(same, scores), abs=1e-4)
    fpr, tpr, _ = skm.roc_curve(same, scores, drop_intermediate=False)
    assert v["eer"] == pytest.approx(np.interp(0.0, fpr + tpr - 1, fpr), abs=0.01)
    assert v["threshold_accuracy"] >= v["accuracy_mean"] - 0.1  # best on all pairs vs. held-out folds

    c = result["closed_set"]
    assert c["images"] == 30 and c["classes"] == 10 and len(c["per_identity"]) == 10
    assert 0 <= c["top1"] <= c["top5"] <= 1
    confusion = np.array(result["confusion_matrix"]["matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == 30
    assert np.trace(confusion) / 30 == pytest.approx(c["top1"])  # no ties in float logits


def test_generated_pairs_and_closed_set_use_cosine_logits(manifest, trained, tmp_path):
    out = tmp_path / "out"
    result = evaluate(trained, manifest, output_dir=out, seed=3)  # pairs drawn from the validation split
    check_outputs(result, out)
    v = result["verification"]
    # 10 identities x 3 validation images: every genuine pair (30) and as many seeded impostor pairs, so that
    # answering "different" every time scores 0.5, not 405/435.
    assert (v["genuine_pairs"], v["impostor_pairs"]) == (30, 30)
    assert v["majority_baseline_accuracy"] == pytest.approx(0.5)
    assert v["tar_at_far"]["1e-02"]["tar"] is None, "30 impostor pairs cannot measure a FAR of 1e-2"
    assert v["tar_at_far"]["1e-01"]["tar"] is not None

    # Closed-set top-1 is the nearest class centre of the (margin-free) cosine, computed here from the
    # embedding model and the head's weights: no label leaks in.
    embeddings = embed_images(trained.embedding_model, validation_dataset(manifest, IMAGE_SIZE, 0.5, 16),
                              flip_tta=False)
    centers = trained.training_model.get_layer("head").centers.numpy()
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    labels = np.array(manifest.labels("validation"))
    expected = np.mean(np.argmax(embeddings @ centers.T, axis=1) == labels)
    assert result["closed_set"]["top1"] == pytest.approx(expected)
    assert result["summary"]["top1_accuracy"] == result["closed_set"]["top1"]


def write_lfw_tree(root, people: int = 6, images: int = 4) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in range(people):
        name = f"Person_{k}"
        os.makedirs(root / name)
        for i in range(1, images + 1):
            pixels = rng.integers(0, 256, (90, 80, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{i:04d}.jpg")


def test_pairs_file_without_manifest_and_missing_images(trained, tmp_path):
    write_lfw_tree(tmp_path)
    matched = [f"Person_{k}\t{i}\t{i + 1}" for k in range(6) for i in (1, 2)]
    mismatched = [f"Person_{k}\t1\tPerson_{(k + 1) % 6}\t{j}" for k in range(6) for j in (2, 3)]
    pairs_file = tmp_path / "pairs.txt"
    pairs_file.write_text("\n".join(matched + ["Person_0\t1\t9"] + mismatched), encoding="utf-8")
    with pytest.raises(MissingImagesError, match="Person_0_0009.jpg"):
        evaluate(trained, None, output_dir=tmp_path / "out", pairs_file=pairs_file)
    result = evaluate(trained, None, output_dir=tmp_path / "out", pairs_file=pairs_file, on_missing="skip",
                      flip_tta=False, batch_size=8)
    check_outputs(result, tmp_path / "out")
    v = result["verification"]
    assert (v["genuine_pairs"], v["impostor_pairs"], v["pairs_counts"]["skipped"]) == (12, 12, 1)
    assert "skipped" in result["closed_set"] and result["confusion_matrix"] is None


def test_identity_count_mismatch_names_both_numbers(trained, manifest, tmp_path):
    fewer = dataclasses.replace(manifest, class_names=manifest.class_names[:9])
    with pytest.raises(EvaluationError, match="head has 10 identities but the manifest lists 9 class names"):
        evaluate(trained, fewer, output_dir=tmp_path)


def test_other_class_names_are_refused(trained, manifest, tmp_path):
    names = list(manifest.class_names)
    names[0], names[1] = names[1], names[0]
    swapped = dataclasses.replace(manifest, class_names=names)
    with pytest.raises(EvaluationError, match="first difference at label 0"):
        evaluate(trained, swapped, output_dir=tmp_path)


def test_image_size_mismatch_is_explained(trained, tmp_path):
    with pytest.raises(EvaluationError, match="model expects 64x64 images but the array holds 32x32"):
        embed_images(trained.embedding_model, np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(EvaluationError, match="model expects 64x64 images but image_size=112 was requested"):
        embed_images(trained.embedding_model, np.zeros((2, 64, 64, 3), np.float32), image_size=112)
    (tmp_path / artifacts.CONFIG_FILE).write_text("image_size: 112\n", encoding="utf-8")
    wrong = dataclasses.replace(trained, config=TrainConfig(image_size=112), path=str(tmp_path))
    with pytest.raises(EvaluationError, match="model expects 64x64 images but its config.yaml says image_size=112"):
        evaluate(wrong, None, output_dir=tmp_path / "out", pairs_file=tmp_path / "unused.txt")


def test_flip_tta_sums_the_mirrored_embedding(trained):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (5, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    model = trained.embedding_model
    plain = model(images, training=False).numpy()
    mirrored = model(images[:, :, ::-1].copy(), training=False).numpy()
    expected = (plain + mirrored) / np.linalg.norm(plain + mirrored, axis=1, keepdims=True)
    np.testing.assert_allclose(embed_images(model, images, batch_size=2), expected, atol=1e-5)
    np.testing.assert_allclose(embed_images(model, images, flip_tta=False), plain, atol=1e-5)
    # A dataset of (images, labels) batches, as make_dataset yields, gives the same.
    dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros(5, np.int32))).batch(3)
    np.testing.assert_allclose(embed_images(model, dataset), expected, atol=1e-5)


def test_confusion_matrix_is_capped_with_an_other_class():
    rng = np.random.default_rng(0)
    names = [f"id{k}" for k in range(80)]
    labels = rng.integers(0, 80, 2000)
    preds = np.where(rng.random(2000) < 0.5, labels, rng.integers(0, 80, 2000))
    confusion = _confusion_for_kfp(labels, preds, names)
    matrix = np.array(confusion["matrix"])
    assert confusion["capped"] and "capped at 50" in confusion["note"]
    assert len(confusion["categories"]) == MAX_CONFUSION_CLASSES == matrix.shape[0] == matrix.shape[1]
    assert confusion["categories"][-1] == "(other)" and matrix.sum() == 2000
    small = _confusion_for_kfp(labels % 5, preds % 5, names[:5])
    assert not small["capped"] and np.array(small["matrix"]).shape == (5, 5)
