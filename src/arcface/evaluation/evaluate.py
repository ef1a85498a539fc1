"""The evaluation step: embed faces, score verification pairs and closed-set identification, write a report.

Two questions are answered about a trained model:

* **Verification** (the one ArcFace is for): are two faces the same person? Pairs come from an LFW pairs
  file, or are drawn from the manifest's validation split. Reported: LFW 10-fold accuracy, AUC, EER,
  TAR at FAR 1e-1 .. 1e-4 (``None`` with a reason where there are too few impostor pairs), one threshold.
* **Closed-set identification** on the validation split: top-1/top-5 accuracy over the training identities,
  per-identity accuracy and the confusion matrix.

Closed-set logits are the *cosine* logits of the head, not the training model's output: the training model
takes ``[image, label]`` and its margin lowers the true class's logit, so feeding the true labels would leak
them into the prediction, and feeding zeros would penalize class 0. The backbone (the ``keras.Model`` inside
the training model) gives the features, and ``head.cosine(features)`` (MarginHead) or ``head(features)``
(SoftmaxHead) gives margin-free logits.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from arcface import artifacts
from arcface.choices import ALIGN_CHOICES
from arcface.contracts import BEST_THRESHOLD, KFOLD_MEAN, EvaluationDir, EvaluationSummary, ExportDir
from arcface.data.manifest import Manifest
from arcface.embedding import Embedder, read_image_bytes
from arcface.evaluation import metrics as M
from arcface.evaluation.pairs import PairList, generate_pairs, read_pairs
from arcface.evaluation.report import write_report
from arcface.model_input import ModelInput, read_model_input

log = logging.getLogger(__name__)

__all__ = ["EvaluationError", "FAR_TARGETS", "embed_images", "evaluate"]

FAR_TARGETS = (1e-1, 1e-2, 1e-3, 1e-4)
VALIDATION = "validation"
MAX_CONFUSION_CLASSES = 50


class EvaluationError(ValueError):
    """The model and the data do not fit together; the message names both sides and the fix."""


# ---------------------------------------------------------------------------------------------------
# Embedding
# ---------------------------------------------------------------------------------------------------
def _model_size(model) -> tuple[int, int]:
    shape = model.input_shape
    shape = shape[0] if isinstance(shape, list) else shape
    return int(shape[1]), int(shape[2])


def _size_error(model_hw: tuple[int, int], got: str, fix: str) -> EvaluationError:
    return EvaluationError(f"model expects {model_hw[0]}x{model_hw[1]} images but {got}; {fix}")


def _path_dataset(paths: Sequence[str], image_size: int, center_crop: float, batch_size: int):
    """Batches of model inputs read from files by ``model_input``, the function training uses (here with the
    EXIF orientation read from each file, as there is no manifest)."""
    import tensorflow as tf

    from arcface.data.preprocess import model_input

    def load(path):
        return model_input(tf.io.read_file(path), image_size, center_crop)

    return (tf.data.Dataset.from_tensor_slices(list(map(str, paths)))
            .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))


def validation_dataset(manifest, image_size: int, center_crop: float, batch_size: int):
    """The manifest's validation split as training reads it for validation: in row order, unaugmented."""
    from arcface.data.input import make_dataset  # TensorFlow

    return make_dataset(manifest, VALIDATION, image_size=image_size, batch_size=batch_size, training=False,
                        center_crop=center_crop, augment=False)


def _as_batches(images, model_hw: tuple[int, int], center_crop: float, batch_size: int):
    """Any accepted input as an iterable of (batch, H, W, 3) float32 batches, checked against the model."""
    import tensorflow as tf

    if isinstance(images, tf.data.Dataset):
        spec = images.element_spec
        if isinstance(spec, tuple | list):  # (images, labels) as make_dataset yields
            images = images.map(lambda *element: element[0])
            spec = spec[0]
        elif isinstance(spec, dict):
            raise EvaluationError("the dataset yields a dict; pass a dataset of images or (images, labels)")
        if spec.shape.rank == 3:
            images = images.batch(batch_size)
            shape = spec.shape
        elif spec.shape.rank == 4:
            shape = spec.shape[1:]
        else:
            raise EvaluationError(f"the dataset yields tensors of shape {spec.shape}; expected images "
                                  "(H, W, 3) or batches (N, H, W, 3)")
        got = tuple(shape[:2])
        if None not in got and got != model_hw:
            raise _size_error(model_hw, f"the dataset yields {got[0]}x{got[1]} images",
                              f"build it with image_size={model_hw[0]}, the size the model was trained at")
        return images
    if isinstance(images, np.ndarray) or tf.is_tensor(images):
        array = np.asarray(images, dtype=np.float32)
        if array.ndim != 4 or array.shape[-1] != 3:
            raise EvaluationError(f"an image array must be (N, H, W, 3), got {array.shape}")
        if tuple(array.shape[1:3]) != model_hw:
            raise _size_error(model_hw, f"the array holds {array.shape[1]}x{array.shape[2]} images",
                              f"resize them to {model_hw[0]}x{model_hw[1]} and normalize as (x - 127.5) / 128")
        return [array[i:i + batch_size] for i in range(0, len(array), batch_size)]
    if isinstance(images, str | os.PathLike):
        raise EvaluationError(f"pass a list of image paths, not one path ({images!r})")
    if model_hw[0] != model_hw[1]:
        raise EvaluationError(f"the model's input is not square ({model_hw[0]}x{model_hw[1]}); only square "
                              "face crops are supported")
    return _path_dataset(list(images), model_hw[0], center_crop, batch_size)


def embed_images(embedding_model, images, image_size: int | None = None, center_crop: float = 1.0,
                 batch_size: int = 64, flip_tta: bool = True, timing: dict | None = None) -> np.ndarray:
    """Unit-length embeddings (n, d) float32 of image files, an image array or a ``tf.data`` dataset.

    Args:
        embedding_model: image -> embedding (``TrainedModel.embedding_model``).
        images: a list of image paths (decoded and cropped as in training), an (N, H, W, 3) array already
            normalized as (x - 127.5) / 128, or a dataset of such images or ``(images, labels)`` batches.
        image_size: the side the model was trained at; checked against the model's input (default: read
            from the model).
        center_crop: fraction of the side kept around the centre before resizing (files only; use the
            training run's value).
        flip_tta: add the embedding of the horizontally mirrored image before normalizing, the usual
            test-time augmentation of face verification (it costs a second forward pass). The embedding
            model's outputs are already unit length, so this sums two unit vectors and normalizes again.
        timing: a dict that receives ``images`` and ``seconds`` of the batches after the first (which
            includes tracing); the steady-state throughput is their ratio.
    """
    model_hw = _model_size(embedding_model)
    if image_size is not None and (image_size, image_size) != model_hw:
        raise _size_error(model_hw, f"image_size={image_size} was requested",
                          f"evaluate at the training size, image_size={model_hw[0]}")
    batches = _as_batches(images, model_hw, center_crop, batch_size)
    embedder = Embedder.of_keras(embedding_model, ModelInput(model_hw[0], center_crop))
    return embedder.embed_batches(batches, flip_tta, timing)


# ---------------------------------------------------------------------------------------------------
# Model and data checks
# ---------------------------------------------------------------------------------------------------
def _load(model, manifest):
    if isinstance(model, artifacts.TrainedModel):
        trained = model
    else:
        path = str(model)
        folder_has_training = os.path.exists(os.path.join(path, artifacts.TRAINING_MODEL_FILE))
        trained = artifacts.load_model_dir(path, with_training_model=folder_has_training)
    if manifest is not None and not isinstance(manifest, Manifest):
        manifest = Manifest.read(str(manifest))
    return trained, manifest


def _model_input(trained, center_crop: float | None, align: str | None) -> ModelInput:
    """What the model expects (:func:`read_model_input` of its folder), with the crop and alignment a caller
    overrides: ``align`` 'mtcnn' or 'none', or None/'auto' to follow the model."""
    if align not in (None, *ALIGN_CHOICES):
        raise EvaluationError(f"align={align!r} is unknown; choose {', '.join(ALIGN_CHOICES)}")
    path = os.fspath(trained.path or "")
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    model_input = (read_model_input(folder, trained.image_size, trained.config.center_crop) if folder else
                   ModelInput(trained.image_size, float(trained.config.center_crop)))
    if center_crop is not None:
        model_input = dataclasses.replace(model_input, center_crop=float(center_crop))
    if align in ALIGN_CHOICES[1:]:  # past 'auto', which follows the model
        model_input = dataclasses.replace(model_input, alignment=align)
    return model_input


def _head_classes(training_model) -> int | None:
    try:
        return int(training_model.get_layer("head").n_classes)
    except ValueError:
        return None


def _check_fit(trained, manifest) -> None:
    """Fail early, naming both numbers, when the model and the data cannot belong together."""
    side = trained.image_size
    has_config = bool(trained.path) and os.path.exists(os.path.join(trained.path, artifacts.CONFIG_FILE))
    if has_config and int(trained.config.image_size) != side:
        raise _size_error((side, side), f"its config.yaml says image_size={trained.config.image_size}",
                          "the model folder mixes two runs; retrain, or restore the config.yaml of this model")
    for key in ("image_size", "input_size"):
        value = trained.metadata.get(key)
        if isinstance(value, int) and value != side:
            raise _size_error((side, side), f"its metadata.json says {key}={value}",
                              "the model folder mixes two runs; retrain, or restore its metadata.json")
    if manifest is None:
        return
    n_manifest = len(manifest.class_names)
    if trained.training_model is not None:
        n_head = _head_classes(trained.training_model)
        if n_head is not None and n_head != n_manifest:
            raise EvaluationError(
                f"the model's head has {n_head} identities but the manifest lists {n_manifest} class names; "
                "evaluate with the manifest the model was trained on (its hash is in metadata.json), or "
                f"retrain with n_classes={n_manifest} on this manifest")
    names = trained.class_names
    if names and names != list(manifest.class_names):
        differ = next((i for i, (a, b) in enumerate(zip(names, manifest.class_names, strict=False)) if a != b),
                      min(len(names), n_manifest))
        raise EvaluationError(
            f"the model was trained on {len(names)} identities that differ from the manifest's {n_manifest} "
            f"(first difference at label {differ}), so its labels mean other people; evaluate with the "
            "manifest the model was trained on (its hash is in metadata.json)")


def _backbone_and_head(training_model):
    """The backbone sub-model and the head layer of a training model built by ``build_models``."""
    import keras

    backbones = [layer for layer in training_model.layers if isinstance(layer, keras.Model)]
    if len(backbones) != 1:
        raise EvaluationError(f"the training model holds {len(backbones)} sub-models; expected exactly one "
                              "backbone (a model built by arcface.models.build_models)")
    try:
        head = training_model.get_layer("head")
    except ValueError:
        raise EvaluationError("the training model has no layer named 'head'; it was not built by "
                              "arcface.models.build_models") from None
    return backbones[0], head


# ---------------------------------------------------------------------------------------------------
# Closed-set identification
# ---------------------------------------------------------------------------------------------------
def _confusion_for_kfp(labels: np.ndarray, preds: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """The confusion matrix in KFP's ``log_confusion_matrix`` form, at most MAX_CONFUSION_CLASSES wide.

    Beyond that, the classes with the most validation images are kept and every other class is pooled
    into one "(other)" row and column, so the counts still add up to the number of images.
    """
    n = len(class_names)
    if n <= MAX_CONFUSION_CLASSES:
        matrix = M.confusion_matrix(labels, preds, n)
        return {"categories": list(class_names), "matrix": matrix.tolist(), "capped": False,
                "note": f"all {n} classes"}
    keep = MAX_CONFUSION_CLASSES - 1
    frequency = np.bincount(labels, minlength=n)
    kept = np.sort(np.argsort(-frequency, kind="stable")[:keep])
    remap = np.full(n, keep, dtype=np.int64)
    remap[kept] = np.arange(keep)
    matrix = M.confusion_matrix(remap[labels], remap[preds], keep + 1)
    return {"categories": [class_names[i] for i in kept] + ["(other)"], "matrix": matrix.tolist(),
            "capped": True, "note": f"capped at {MAX_CONFUSION_CLASSES}: the {keep} classes with the most "
                                    f"validation images; the other {n - keep} classes are pooled as '(other)'"}


def _closed_set(trained, manifest, center_crop: float, batch_size: int) -> dict[str, Any]:
    if trained.training_model is None:
        return {"skipped": "the model folder has no training_model.keras (the head is needed for closed-set "
                           "accuracy)"}
    if manifest is None:
        return {"skipped": "no manifest was given"}
    paths = manifest.absolute_paths(VALIDATION)
    if not paths:
        return {"skipped": "the manifest's validation split is empty"}
    labels = np.asarray(manifest.labels(VALIDATION), dtype=np.int64)
    backbone, head = _backbone_and_head(trained.training_model)
    dataset = validation_dataset(manifest, trained.image_size, center_crop, batch_size)
    features = Embedder.of_keras(backbone, ModelInput(trained.image_size, center_crop)).embed_batches(
        _as_batches(dataset, _model_size(backbone), center_crop, batch_size), normalize=False)
    # Margin-free logits: the cosine to each class centre (MarginHead) or the plain classifier (SoftmaxHead).
    logits = np.asarray(head.cosine(features) if hasattr(head, "cosine") else head(features), dtype=np.float64)
    class_names = list(manifest.class_names)
    k = min(5, len(class_names))
    preds = np.argmax(logits, axis=1)
    correct = preds == labels
    per_identity = []
    for label in np.unique(labels):
        mask = labels == label
        per_identity.append({"identity": class_names[label], "label": int(label), "images": int(mask.sum()),
                             "top1": float(correct[mask].mean())})
    return {"top1": M.top_k_accuracy(logits, labels, 1), "top5": M.top_k_accuracy(logits, labels, k), "k": k,
            "images": int(labels.size), "classes": len(class_names),
            "identities_in_validation": len(per_identity), "per_identity": per_identity,
            "confusion_matrix": _confusion_for_kfp(labels, preds, class_names)}


# ---------------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------------
def _pairs(manifest, pairs_file, pairs_root, seed: int, on_missing: str) -> tuple[PairList, str]:
    if pairs_file:
        return read_pairs(pairs_file, pairs_root, on_missing=on_missing), "pairs_file"
    if manifest is None:
        raise EvaluationError("nothing to verify: pass a manifest (pairs are drawn from its validation split) "
                              "or a pairs_file")
    rows = manifest.split(VALIDATION)
    # As many impostor as genuine pairs, as in LFW: with more impostors, always answering "different" would
    # already score high, and the accuracy the quality gate reads would mean nothing.
    pairs = generate_pairs([r.identity for r in rows], manifest.absolute_paths(VALIDATION), seed, min_impostor=0)
    if pairs.counts["genuine"] == 0 or pairs.counts["impostor"] == 0:
        raise EvaluationError(
            f"the validation split ({len(rows)} images, {pairs.counts['identities']} identities) yields "
            f"{pairs.counts['genuine']} genuine and {pairs.counts['impostor']} impostor pairs; verification "
            "needs both: give identities at least two validation images, or pass an LFW pairs_file")
    return pairs, "generated from the validation split"


def _verification(scores: np.ndarray, pairs: PairList, n_folds: int = 10) -> dict[str, Any]:
    is_same = pairs.is_same
    n_genuine, n_impostor = int(is_same.sum()), int((~is_same).sum())
    folds = pairs.folds
    n_folds = int(folds.max()) + 1 if folds is not None else n_folds
    # The accuracy of always answering the more frequent kind: accuracy means little unless it beats this
    # (generated pairs hold more impostors than genuine pairs, so that low FARs can be measured).
    result: dict[str, Any] = {"majority_baseline_accuracy": max(n_genuine, n_impostor) / len(scores)}
    if min(n_genuine, n_impostor) >= n_folds:
        kfold = M.lfw_kfold_accuracy(scores, is_same, n_folds, folds)
        result.update({"accuracy_mean": kfold.mean, "accuracy_std": kfold.std, "folds": n_folds,
                       "fold_accuracies": kfold.accuracies, "fold_thresholds": kfold.thresholds})
    else:
        result.update({"accuracy_mean": None, "accuracy_std": None, "folds": n_folds,
                       "fold_accuracies": [], "fold_thresholds": [],
                       "accuracy_reason": f"{n_genuine} genuine and {n_impostor} impostor pairs are too few for "
                                          f"{n_folds} folds (each fold needs at least one of each)"})
    threshold, accuracy = M.best_threshold(scores, is_same)
    eer, eer_threshold = M.eer(scores, is_same)
    result.update({
        "auc": M.auc(scores, is_same), "eer": eer, "eer_threshold": eer_threshold,
        "threshold": threshold, "threshold_accuracy": accuracy,
        "tar_at_far": {f"{t:.0e}": M.tar_at_far(scores, is_same, t).to_dict() for t in FAR_TARGETS},
        "genuine_score_mean": float(scores[is_same].mean()), "genuine_score_std": float(scores[is_same].std()),
        "impostor_score_mean": float(scores[~is_same].mean()),
        "impostor_score_std": float(scores[~is_same].std()),
    })
    return result


# ---------------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------------
def _verification_summary(v: dict[str, Any], flip_tta: bool, **closed_set_and_speed) -> EvaluationSummary:
    """The headline numbers of one model's verification ``v`` (:func:`_verification` of its scores)."""
    # Too few pairs for the k folds: the best-threshold accuracy on all pairs stands in, and says so.
    kfold = v["accuracy_mean"] is not None
    return EvaluationSummary(
        verification_accuracy=v["accuracy_mean"] if kfold else v["threshold_accuracy"],
        verification_accuracy_kind=KFOLD_MEAN if kfold else BEST_THRESHOLD,
        verification_accuracy_std=v["accuracy_std"], auc=v["auc"], eer=v["eer"], threshold=v["threshold"],
        flip_tta=flip_tta, genuine_pairs=v["genuine_pairs"], impostor_pairs=v["impostor_pairs"],
        tar_at_far={key: value["tar"] for key, value in v["tar_at_far"].items()}, **closed_set_and_speed)


def _summary(metrics: dict[str, Any]) -> EvaluationSummary:
    """The headline numbers, flat, for KFP's Metrics artifact, the quality gate and comparing runs."""
    c, t = metrics["closed_set"], metrics["throughput"]
    return _verification_summary(metrics["verification"], metrics["model"]["flip_tta"], top1_accuracy=c.get("top1"),
                                 top5_accuracy=c.get("top5"), images_per_second=t["images_per_second"])


def _pair_scores(embeddings: np.ndarray, paths: Sequence[str], pairs: PairList) -> np.ndarray:
    """The cosine of each pair, from the embeddings of ``paths`` (in that order)."""
    index = {p: i for i, p in enumerate(paths)}
    a = embeddings[[index[p.path_a] for p in pairs]]
    b = embeddings[[index[p.path_b] for p in pairs]]
    return np.sum(a * b, axis=1).astype(np.float64)


def _aligned_inputs(paths: Sequence[str], model_input: ModelInput) -> tuple[np.ndarray, dict[str, str]]:
    """The model inputs of raw photos aligned as training crops are, through the embedders' own entrance; a
    face not found is fed whole (and listed)."""
    embedder = Embedder(forward=_never_called, model_input=dataclasses.replace(model_input, alignment="mtcnn"))
    batch, faceless = embedder.checked_inputs([read_image_bytes(p) for p in paths], list(paths))
    return batch, {f.name: f"{f.code}: {f.message}" for f in faceless}


def _never_called(batch: np.ndarray) -> np.ndarray:
    raise AssertionError("only the embedder's inputs are wanted here")


def _champion(champion: str | os.PathLike, pairs: PairList, manifest, pairs_file, paths: Sequence[str],
              batch_size: int, flip_tta: bool) -> dict[str, Any]:
    """The champion (an export folder: model.keras and its card) scored on the same pairs and images, the
    same way: the same decoding, its own image size and crop (from its card), the same flip_tta."""
    folder = os.fspath(champion)
    keras_file = os.path.join(folder, ExportDir.KERAS_FILE)
    if not os.path.isfile(keras_file):
        raise EvaluationError(f"the champion {folder} has no {ExportDir.KERAS_FILE}; it cannot be scored on this "
                              "run's pairs. Promote models exported with 'keras' in export_formats, or roll back "
                              "to a version that has one")
    model = artifacts.load_keras(keras_file)
    model_input = read_model_input(folder, _model_size(model)[0])
    side, crop = model_input.image_size, model_input.center_crop
    not_aligned: dict[str, str] = {}
    if not pairs_file:  # this run's validation faces (aligned by this run's align step when it aligns)
        images = validation_dataset(manifest, side, crop, batch_size)
    elif model_input.alignment != "none":  # raw photos, aligned as it was trained
        images, not_aligned = _aligned_inputs(paths, model_input)
    else:
        images = list(paths)
    scores = _pair_scores(embed_images(model, images, side, crop, batch_size, flip_tta), paths, pairs)
    verification = {"genuine_pairs": int(pairs.is_same.sum()), "impostor_pairs": int((~pairs.is_same).sum()),
                    **_verification(scores, pairs)}
    return {"source": folder, "image_size": side, "center_crop": crop, "not_aligned": not_aligned,
            "verification": verification,
            "summary": _verification_summary(verification, flip_tta).to_dict()}


def _check_finite(metrics: Any, where: str = "metrics") -> None:
    if isinstance(metrics, dict):
        for key, value in metrics.items():
            _check_finite(value, f"{where}.{key}")
    elif isinstance(metrics, list):
        for i, value in enumerate(metrics):
            _check_finite(value, f"{where}[{i}]")
    elif isinstance(metrics, float) and not math.isfinite(metrics):
        raise EvaluationError(f"{where} is {metrics}; this is a bug in the evaluation code, please report it")


def _pair_images(manifest, pairs: PairList, pairs_file, model_input: ModelInput,
                 batch_size: int) -> tuple[list[str], Any, dict[str, str]]:
    """The paths of the pairs' images, what the model is fed for them, and the photos whose face was not found."""
    if pairs_file:
        paths = sorted({p for pair in pairs for p in (pair.path_a, pair.path_b)})
        if model_input.alignment != "none":  # raw photos: aligned as the training crops were
            images, not_aligned = _aligned_inputs(paths, model_input)
            return paths, images, not_aligned
        return paths, paths, {}
    # Drawn from the validation split: read it as training does (EXIF orientation included).
    paths = manifest.absolute_paths(VALIDATION)
    return paths, validation_dataset(manifest, model_input.image_size, model_input.center_crop, batch_size), {}


def _timed_embeddings(trained, images, n_images: int, crop: float, batch_size: int,
                      flip_tta: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """The embeddings of ``images``, and metrics.json's ``throughput`` of computing them."""
    start, timing = time.perf_counter(), {}
    embeddings = embed_images(trained.embedding_model, images, trained.image_size, crop, batch_size, flip_tta,
                              timing)
    seconds = time.perf_counter() - start
    # Steady state when there was more than one batch; else the whole call, tracing included.
    timed_images, timed_seconds = ((timing["images"], timing["seconds"]) if timing.get("images")
                                   else (n_images, seconds))
    return embeddings, {
        "images": n_images, "seconds": seconds, "flip_tta": flip_tta, "batch_size": batch_size,
        "includes_tracing": not timing.get("images"),
        "images_per_second": timed_images / timed_seconds if timed_seconds > 0 else None,
        "note": "source images per second (reading, decoding and the model), each embedded "
                "twice when flip_tta is on; measured after the first batch, which includes "
                "tracing, when there is more than one batch"}


def _verification_record(scores: np.ndarray, pairs: PairList, source: str, pairs_file, method: str,
                         not_aligned: dict[str, str]) -> dict[str, Any]:
    """metrics.json's ``verification``: where the pairs came from and how they were read, then the scores."""
    return {"source": source, "pairs_file": str(pairs_file) if pairs_file else None,
            "pairs": len(pairs), "genuine_pairs": int(pairs.is_same.sum()),
            "impostor_pairs": int((~pairs.is_same).sum()), "pairs_counts": pairs.counts,
            "alignment": method, "not_aligned": not_aligned,
            **_verification(scores, pairs)}


def _metrics(trained, manifest, crop: float, embedding_size: int, flip_tta: bool, verification: dict[str, Any],
             closed: dict[str, Any], throughput: dict[str, Any], roc: dict[str, Any]) -> dict[str, Any]:
    """metrics.json, in its order of keys; the confusion matrix leaves ``closed`` for a key of its own."""
    confusion = closed.pop("confusion_matrix", None)
    return {
        "model": {"path": trained.path, "image_size": trained.image_size, "center_crop": crop,
                  "embedding_size": embedding_size, "backbone": trained.config.backbone,
                  "margin": trained.config.margin, "flip_tta": flip_tta},
        "data": {"manifest_sha256": manifest.sha256 if manifest is not None else None,
                 "model_manifest_sha256": trained.metadata.get("manifest_sha256"),
                 "class_names": len(manifest.class_names) if manifest is not None else None},
        "verification": verification,
        "closed_set": closed,
        "throughput": throughput,
        "roc": roc,
        "confusion_matrix": confusion,
    }


def evaluate(model, manifest=None, *, output_dir: str | os.PathLike, pairs_file: str | os.PathLike | None = None,
             pairs_root: str | os.PathLike | None = None, flip_tta: bool = True, batch_size: int = 64,
             seed: int = 42, on_missing: str = "error", center_crop: float | None = None,
             align: str | None = None, champion: str | os.PathLike | None = None,
             champion_version: int | None = None) -> dict[str, Any]:
    """Evaluate a trained model; write ``metrics.json`` and ``report.html`` into ``output_dir``.

    Args:
        model: a model folder (a training run's save_path) or a loaded ``TrainedModel``.
        manifest: the manifest (path or ``Manifest``) the model was trained on; its validation split gives
            the closed-set accuracy and, without ``pairs_file``, the verification pairs. May be None when a
            pairs file is given (closed-set accuracy is then skipped).
        pairs_file: an LFW pairs file; ``pairs_root`` is the folder of ``<name>/<name>_<i:04d>.jpg``
            (default: the pairs file's folder). ``on_missing`` is passed to :func:`read_pairs`.
        flip_tta: add the mirrored image's embedding for verification.
        seed: for drawing pairs from the validation split.
        center_crop: override the training run's center_crop (default: from the model's config).
        align: how the images of a pairs file are aligned: 'mtcnn', 'none', or None/'auto' to follow the
            model's metadata (the manifest's images are already what training read). An image whose face is
            not found is fed whole, and listed in ``verification.not_aligned``.
        champion: the model in production (an export folder, e.g. a model store version's assets.extra/);
            it is scored on exactly the same pairs and images with the same protocol, and its numbers go
            into metrics.json's ``champion`` (read back by ``EvaluationDir.read_champion``).
        champion_version: its store version, recorded with it (the promotion checks it has not moved).

    Returns:
        metrics.json as written (:class:`arcface.contracts.EvaluationDir`): ``verification``, ``closed_set``,
        ``throughput``, ``summary`` (an :class:`~arcface.contracts.EvaluationSummary` as a dict),
        plus ``roc`` ({fpr, tpr, thresholds}, <= 200 points, for ``log_roc_curve``) and
        ``confusion_matrix`` ({categories, matrix, ...}, <= 50 classes, for ``log_confusion_matrix``).
    """
    trained, manifest = _load(model, manifest)
    _check_fit(trained, manifest)
    model_input = _model_input(trained, center_crop, align)
    crop, method = model_input.center_crop, model_input.alignment
    os.makedirs(output_dir, exist_ok=True)

    closed = _closed_set(trained, manifest, crop, batch_size)
    pairs, source = _pairs(manifest, pairs_file, pairs_root, seed, on_missing)
    paths, images, not_aligned = _pair_images(manifest, pairs, pairs_file, model_input, batch_size)
    embeddings, throughput = _timed_embeddings(trained, images, len(paths), crop, batch_size, flip_tta)
    scores = _pair_scores(embeddings, paths, pairs)

    verification = _verification_record(scores, pairs, source, pairs_file, method, not_aligned)
    far, tar, thresholds = M.roc_curve(scores, pairs.is_same)
    metrics = _metrics(trained, manifest, crop, int(embeddings.shape[1]), flip_tta, verification, closed,
                       throughput, M.subsample_roc(far, tar, thresholds, max_points=200))
    if champion is not None:
        metrics["champion"] = {"version": champion_version,
                               **_champion(champion, pairs, manifest, pairs_file, paths, batch_size, flip_tta)}
    _check_finite(metrics)
    metrics = EvaluationDir.write(output_dir, _summary(metrics), metrics)
    write_report(EvaluationDir.report_file(output_dir), metrics, scores=scores, is_same=pairs.is_same,
                 far=far, tar=tar)
    log.info("verification accuracy %s, AUC %.4f, EER %.4f on %d pairs; closed-set top-1 %s",
             verification["accuracy_mean"], verification["auc"], verification["eer"], len(pairs),
             closed.get("top1", closed.get("skipped")))
    return metrics
