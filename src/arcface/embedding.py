"""Using a trained or exported model: embed face images, compare two faces, search a gallery.

:func:`load_embedder` accepts a training run's folder, a ``.keras`` file, or an export folder (``model.keras``
or ``saved_model/`` inside), and returns an :class:`Embedder`. Images become model inputs through
:func:`arcface.data.preprocess.model_input`, the function training, evaluation and the SavedModel's serving
signature use (EXIF orientation included), so an embedding here is the embedding the pipeline evaluated.
A model trained on aligned crops (its metadata or model card records the alignment) gets each photo aligned
the same way first (:func:`arcface.data.align.align_file_bytes`); ``align`` overrides what the model says.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from arcface import artifacts, atomic
from arcface.contracts import EvaluationDir, ExportDir, ModelDir

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".pgm", ".ppm")
OUTPUT_FORMATS = ("npy", "csv", "jsonl")


class EmbeddingError(ValueError):
    """An image or a model cannot be used; the message names the file and the fix."""


@dataclasses.dataclass
class Embedder:
    """Face images -> unit-length embeddings with one model.

    ``forward`` maps a normalized float32 batch [N, S, S, 3] to embeddings. ``threshold`` is the evaluated
    same-person similarity threshold (None when the model was never evaluated); it was chosen on embeddings
    computed with ``threshold_flip_tta``, so comparisons at that threshold should use the same setting.
    """

    forward: Callable[[np.ndarray], np.ndarray]
    image_size: int
    center_crop: float = 1.0
    threshold: float | None = None
    threshold_flip_tta: bool = False
    source: str = ""
    align: str = "none"  # 'mtcnn': photos are aligned onto the template before model_input, as in training

    def inputs(self, contents: Sequence[bytes], names: Sequence[str]) -> np.ndarray:
        """Encoded images -> the model's inputs [N, S, S, 3]: aligned first when the model was trained on aligned
        crops, then ``model_input``. Bytes that are not a readable image are an error naming them."""
        if self.align == "none":
            return np.stack([decode_input(data, name, self.image_size, self.center_crop)
                             for data, name in zip(contents, names, strict=True)])
        from arcface.data.align import aligned_model_inputs

        for data, name in zip(contents, names, strict=True):
            decode_input(data, name, 32)  # unreadable bytes are named as such before detection
        return aligned_model_inputs(list(contents), list(names), self.image_size, self.center_crop,
                                    error=EmbeddingError)[0]

    def load_images(self, paths: Sequence[str]) -> np.ndarray:
        return self.inputs([read_image_bytes(p) for p in paths], list(paths))

    def _embed_batch(self, batch: np.ndarray, flip_tta: bool) -> np.ndarray:
        out = np.asarray(self.forward(batch), dtype=np.float32)
        if flip_tta:  # sum with the mirror image's embedding, as the evaluation does (normalized by the caller)
            out = out + np.asarray(self.forward(np.ascontiguousarray(batch[:, :, ::-1, :])), dtype=np.float32)
        return out

    def embed(self, paths: Sequence[str], batch_size: int = 32, flip_tta: bool = False) -> np.ndarray:
        """Unit-length embeddings [N, D] float32 of image files, in the order given."""
        if batch_size < 1:
            raise EmbeddingError(f"batch_size={batch_size} must be >= 1")
        paths = [str(p) for p in paths]
        if not paths:
            raise EmbeddingError("no images to embed; pass at least one image file")
        outputs = [self._embed_batch(self.load_images(paths[start:start + batch_size]), flip_tta)
                   for start in range(0, len(paths), batch_size)]
        return l2_normalize(np.concatenate(outputs))

    def embed_encoded(self, images: Sequence[bytes], names: Sequence[str] | None = None,
                      flip_tta: bool = False) -> np.ndarray:
        """Unit-length embeddings [N, D] of encoded images (a server's request), exactly as :meth:`embed`
        computes them for files with the same bytes: the same alignment, input function and flip rule."""
        if not images:
            raise EmbeddingError("no images to embed; send at least one image")
        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        return l2_normalize(self._embed_batch(self.inputs(list(images), names), flip_tta))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def read_image_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise EmbeddingError(f"image {path} cannot be read ({e.strerror}); check the path") from None


def decode_input(contents: bytes, name: str, image_size: int, center_crop: float = 1.0) -> np.ndarray:
    """Encoded bytes -> normalized float32 [S, S, 3] (``model_input``); unreadable bytes are an error naming them."""
    import tensorflow as tf

    from arcface.data.preprocess import model_input

    try:
        return model_input(tf.constant(contents), image_size, center_crop).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
        raise EmbeddingError(f"{name} is not a readable image ({e.message.splitlines()[0]}); use JPEG, PNG, "
                             "GIF, BMP or binary PGM/PPM") from None


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------
def _card(folder: str) -> dict[str, Any]:
    """The model card of an export folder; {} for a folder without one (a training run, a bare model)."""
    return ExportDir.read_card(folder) if ExportDir.has_card(folder) else {}


def _threshold_from(folder: str) -> tuple[float | None, bool]:
    """(threshold, flip_tta it was chosen with) from a model card or an evaluation's metrics.json."""
    evaluation = ExportDir.card_evaluation(_card(folder))
    if evaluation is None and EvaluationDir.exists(folder):
        evaluation = EvaluationDir.read(folder)
    return (evaluation.threshold, evaluation.flip_tta) if evaluation is not None else (None, False)


def _keras_forward(model) -> Callable[[np.ndarray], np.ndarray]:
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def step(x):
        return model(x, training=False)

    return lambda batch: step(tf.constant(batch)).numpy()


def _saved_model_forward(path: str) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    import tensorflow as tf

    from arcface.export import OUTPUT_KEY, TENSOR_SIGNATURE

    loaded = tf.saved_model.load(path)
    if TENSOR_SIGNATURE not in loaded.signatures:
        raise EmbeddingError(f"SavedModel {path} has no '{TENSOR_SIGNATURE}' signature (it has "
                             f"{', '.join(loaded.signatures) or 'none'}); export it with `arcface export`")
    signature = loaded.signatures[TENSOR_SIGNATURE]
    image_size = int(signature.structured_input_signature[1]["image"].shape[1])
    return (lambda batch: signature(image=tf.constant(batch))[OUTPUT_KEY].numpy()), image_size


def _alignment_from(folder: str) -> str:
    """The alignment the model in ``folder`` was trained with: its model card's, else its training metadata's;
    'none' for a model that records none (trained before alignment existed, or on pre-aligned crops)."""
    recorded = _card(folder).get("alignment") or ModelDir.read_metadata(folder).get("alignment") or {}
    return str(recorded.get("method", "none"))


def _from_keras_file(path: str, folder: str) -> Embedder:
    """A .keras file; a model card or metadata next to it (an export or run folder) supplies crop and threshold."""
    model = artifacts.load_keras(path)
    card = _card(folder)
    metadata = ModelDir.read_metadata(folder)
    crop = (card.get("input") or {}).get("center_crop", metadata.get("center_crop", 1.0))
    threshold, flip = _threshold_from(folder)
    return Embedder(_keras_forward(model), int(model.input_shape[1]), float(crop), threshold, flip, path,
                    _alignment_from(folder))


ALIGN_CHOICES = ("auto", "mtcnn", "none")


def load_embedder(path: str | os.PathLike, align: str | None = None) -> Embedder:
    """An :class:`Embedder` from a training run's folder, a ``.keras`` file or an export folder.

    ``align`` (mtcnn | none) overrides the alignment the model records; None or 'auto' follows it.
    Every ``.keras`` file is loaded in safe mode: one that carries code (a Lambda layer) is refused.
    """
    if align not in (None, *ALIGN_CHOICES):
        raise EmbeddingError(f"--align={align!r} is unknown; choose one of: {', '.join(ALIGN_CHOICES)}")
    embedder = _load_embedder(str(path))
    if align not in (None, "auto"):
        embedder.align = align
    return embedder


def _load_embedder(path: str) -> Embedder:
    if os.path.isfile(path):
        if not path.endswith(".keras"):
            raise EmbeddingError(f"{path} is not a .keras model file; pass a .keras file, a training run's "
                                 "folder, or an export folder")
        return _from_keras_file(path, os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(path):
        raise EmbeddingError(f"model {path} does not exist; pass a training run's save_path, an export folder "
                             "or a .keras file")
    if os.path.isfile(os.path.join(path, artifacts.EMBEDDING_MODEL_FILE)):  # a training run
        trained = artifacts.load_model_dir(path)
        crop = float(trained.metadata.get("center_crop", trained.config.center_crop))
        threshold, flip = _threshold_from(path)
        return Embedder(_keras_forward(trained.embedding_model), trained.image_size, crop, threshold, flip, path,
                        _alignment_from(path))
    if os.path.isfile(os.path.join(path, ExportDir.KERAS_FILE)):  # an export: the .keras file loads fastest
        return _from_keras_file(os.path.join(path, ExportDir.KERAS_FILE), path)
    from arcface.store import EXTRA_DIR

    extra = os.path.join(path, EXTRA_DIR)  # a model-store version: the export's other files and its card
    if ExportDir.has_card(extra) and os.path.isfile(os.path.join(extra, ExportDir.KERAS_FILE)):
        return _from_keras_file(os.path.join(extra, ExportDir.KERAS_FILE), extra)
    saved_model = next((p for p in (os.path.join(path, ExportDir.SAVED_MODEL_DIR), path)
                        if os.path.isfile(os.path.join(p, "saved_model.pb"))), None)
    if saved_model is None:
        raise EmbeddingError(f"{path} holds no {artifacts.EMBEDDING_MODEL_FILE}, {ExportDir.KERAS_FILE} or "
                             f"{ExportDir.SAVED_MODEL_DIR}/; pass a training run's save_path or an `arcface export` "
                             "folder")
    folder = (path if saved_model != path else extra if ExportDir.has_card(extra)
              else os.path.dirname(os.path.abspath(path)))
    forward, image_size = _saved_model_forward(saved_model)
    crop = float((_card(folder).get("input") or {}).get("center_crop", 1.0))
    threshold, flip = _threshold_from(folder)
    return Embedder(forward, image_size, crop, threshold, flip, saved_model, _alignment_from(folder))


# ---------------------------------------------------------------------------------------------------
# Commands (``arcface embed | compare | search``)
# ---------------------------------------------------------------------------------------------------
def expand_images(items: Sequence[str]) -> list[str]:
    """Files as given; folders replaced by the image files under them (sorted, recursively)."""
    paths: list[str] = []
    for item in map(str, items):
        if os.path.isdir(item):
            found = sorted(os.path.join(folder, f) for folder, _, files in os.walk(item) for f in files
                           if f.lower().endswith(IMAGE_SUFFIXES))
            if not found:
                raise EmbeddingError(f"folder {item} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            paths += found
        else:
            paths.append(item)
    return paths


def _output_format(output: str, fmt: str | None) -> str:
    if fmt is None:
        fmt = os.path.splitext(output)[1].lstrip(".").lower()
    if fmt not in OUTPUT_FORMATS:
        raise EmbeddingError(f"cannot tell the output format of {output!r}; name it .npy, .csv or .jsonl, or pass "
                             "--format npy|csv|jsonl")
    return fmt


def write_embeddings(output: str, paths: Sequence[str], embeddings: np.ndarray, fmt: str) -> None:
    """npy: the [N, D] array; csv: path then D columns; jsonl: {"path", "embedding"} per line. Atomic."""
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    with atomic.replacing(output) as tmp:
        if fmt == "npy":
            with open(tmp, "wb") as f:
                np.save(f, embeddings)
        elif fmt == "csv":
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["path", *(f"e{i}" for i in range(embeddings.shape[1]))])
                writer.writerows([path, *map(repr, map(float, row))]
                                 for path, row in zip(paths, embeddings, strict=True))
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for path, row in zip(paths, embeddings, strict=True):
                    f.write(json.dumps({"path": path, "embedding": [float(v) for v in row]}) + "\n")


def embed_command(model: str, images: Sequence[str], output: str, fmt: str | None = None,
                  align: str | None = None) -> int:
    fmt = _output_format(output, fmt)
    paths = expand_images(images)
    embedder = load_embedder(model, align)
    embeddings = embedder.embed(paths)
    write_embeddings(output, paths, embeddings, fmt)
    order = " (rows in the order of the paths given, folders expanded sorted)" if fmt == "npy" else ""
    print(f"wrote {embeddings.shape[0]} embeddings of size {embeddings.shape[1]} to {output}{order}")
    return 0


def compare_command(model: str, a: str, b: str, threshold: float | None = None, align: str | None = None) -> int:
    embedder = load_embedder(model, align)
    # The evaluated threshold holds for embeddings computed the way the evaluation computed them.
    flip = embedder.threshold_flip_tta if threshold is None else False
    ea, eb = embedder.embed([a, b], flip_tta=flip)
    similarity = float(np.dot(ea, eb))
    print(f"similarity: {similarity:.4f}")
    if threshold is None and embedder.threshold is None:
        print("no threshold known: neither a model_card.json nor a metrics.json next to the model holds an "
              "evaluated threshold (export with --metrics to record one); pass --threshold to decide "
              "same/different", file=sys.stderr)
        return 0
    used = embedder.threshold if threshold is None else threshold
    source = "given" if threshold is not None else "evaluated"
    print(f"{'same' if similarity >= used else 'different'} (threshold {used:.4f}, {source})")
    return 0


def gallery_identities(gallery_dir: str) -> dict[str, list[str]]:
    if not os.path.isdir(gallery_dir):
        raise EmbeddingError(f"gallery {gallery_dir} is not a folder; pass a folder of <identity>/ image folders")
    identities = {}
    for name in sorted(os.listdir(gallery_dir)):
        folder = os.path.join(gallery_dir, name)
        if os.path.isdir(folder):
            images = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))
            if images:
                identities[name] = images
    if not identities:
        raise EmbeddingError(f"gallery {gallery_dir} holds no <identity>/ folders with images; put each "
                             "person's images in a subfolder named after them")
    return identities


def identity_centres(embedder: Embedder, identities: dict[str, list[str]], flip_tta: bool = False) -> np.ndarray:
    """[identities, D]: the mean of each identity's unit embeddings, renormalized to unit length."""
    paths = [p for images in identities.values() for p in images]
    embeddings = embedder.embed(paths, flip_tta=flip_tta)
    centres, start = [], 0
    for images in identities.values():
        centres.append(embeddings[start:start + len(images)].mean(axis=0))
        start += len(images)
    return l2_normalize(np.stack(centres))


def search_command(model: str, gallery_dir: str, probe: str, top_k: int = 5, align: str | None = None) -> int:
    if top_k < 1:
        raise EmbeddingError(f"--top_k={top_k} must be >= 1")
    embedder = load_embedder(model, align)
    identities = gallery_identities(gallery_dir)
    flip = embedder.threshold_flip_tta
    centres = identity_centres(embedder, identities, flip_tta=flip)
    similarities = centres @ embedder.embed([probe], flip_tta=flip)[0]
    names = list(identities)
    order = np.argsort(-similarities, kind="stable")[:top_k]
    print(f"top {len(order)} of {len(names)} identities for {probe}:")
    for rank, index in enumerate(order, start=1):
        print(f"{rank:3d}  {similarities[index]:.4f}  {names[index]}")
    return 0
