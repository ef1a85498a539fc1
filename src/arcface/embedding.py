"""Using a trained or exported model: embed face images, compare two faces, search a gallery.

:func:`load_embedder` accepts a training run's folder, a ``.keras`` file, or an export folder (``model.keras``
or ``saved_model/`` inside), and returns an :class:`Embedder`. Images become model inputs through
:func:`arcface.data.preprocess.model_input`, the function training, evaluation and the SavedModel's serving
signature use (EXIF orientation included), so an embedding here is the embedding the pipeline evaluated.
A model trained on aligned crops (its metadata or model card records the alignment) gets each photo aligned
the same way first (:meth:`Embedder.inputs_from`: the align step's detector, face choice and warp); ``align`` overrides what the model says.
A photo in which the detector finds no usable face does not sink a batch (:meth:`Embedder.embed_many`): it is
skipped and reported (:class:`NoFace`: file, code, fix), fails the batch, or is read whole (``on_no_face``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from arcface import artifacts, atomic
from arcface.choices import ALIGN_CHOICES, EMBEDDING_FORMATS, NO_FACE_CHOICES
from arcface.contracts import ExportDir
from arcface.data.align import CODES, align_detected, default_detector, inputs_from_alignments, upright_image
from arcface.export import OUTPUT_KEY, TENSOR_SIGNATURE
from arcface.mlops.store import EXTRA_DIR
from arcface.model_input import ModelInput, read_model_input

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".pgm", ".ppm")
OUTPUT_FORMATS = EMBEDDING_FORMATS


class EmbeddingError(ValueError):
    """An image or a model cannot be used; the message names the file and the fix."""


@dataclasses.dataclass
class Embedder:
    """Face images -> unit-length embeddings with one model: the one embedder of every entrance (evaluation,
    ``arcface embed/compare/search``, the gallery, the server).

    ``forward`` maps a normalized float32 batch [N, S, S, 3] to embeddings; ``model_input`` is what the model
    expects (:func:`arcface.model_input.read_model_input`): size, crop, alignment, and the evaluated
    same-person ``threshold`` with the flip rule its embeddings were computed with.
    """

    forward: Callable[[np.ndarray], np.ndarray]
    model_input: ModelInput
    source: str = ""

    @classmethod
    def of_keras(cls, model, model_input: ModelInput, source: str = "") -> Embedder:
        """A Keras model (an embedding model, or a backbone for its features) as an Embedder."""
        return cls(_keras_forward(model), model_input, source)

    @property
    def image_size(self) -> int:
        return self.model_input.image_size

    @property
    def center_crop(self) -> float:
        return self.model_input.center_crop

    @property
    def align(self) -> str:
        return self.model_input.alignment

    @property
    def threshold(self) -> float | None:
        return self.model_input.threshold

    @property
    def threshold_flip_tta(self) -> bool:
        return self.model_input.flip_tta

    def checked_inputs(self, contents: Sequence[bytes], names: Sequence[str]) -> tuple[np.ndarray, list[NoFace]]:
        """The model's inputs [N, S, S, 3], and the photos in which the detector found no usable face: their
        rows hold the whole image (as ``align='none'`` reads it), so the caller decides to skip, fail or use them."""
        images = self.decode(contents, names)
        return self.inputs_from(images, names, self.detect(images))

    def decode(self, contents: Sequence[bytes], names: Sequence[str]) -> list[np.ndarray]:
        """Encoded photos -> upright uint8 [H, W, 3] images: each photo is decoded once, here, whatever follows."""
        return [decode_upright(data, name) for data, name in zip(contents, names, strict=True)]

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Any]] | None:
        """The faces in each upright image (one batched detector call), or None for a model fed whole images."""
        if self.align == "none":
            return None
        return default_detector().detect(images)

    def inputs_from(self, images: Sequence[np.ndarray], names: Sequence[str],
                    faces: Sequence[Sequence[Any]] | None) -> tuple[np.ndarray, list[NoFace]]:
        """Upright images and their detected faces (None: not aligning) -> :meth:`checked_inputs`'s result."""
        from arcface.data.preprocess import decoded_model_input

        if faces is None:
            return np.stack([decoded_model_input(image, self.image_size, self.center_crop).numpy()
                             for image in images]), []
        alignments = [align_detected(image, found, self.image_size)
                      for image, found in zip(images, faces, strict=True)]
        batch, not_aligned = inputs_from_alignments(images, alignments, names, self.image_size, self.center_crop,
                                                    whole_image_fallback=True, error=EmbeddingError)
        return batch, [NoFace.from_finding(i, name, not_aligned[name]) for i, name in enumerate(names)
                       if name in not_aligned]

    def _embed_batch(self, batch: np.ndarray, flip_tta: bool) -> np.ndarray:
        """The raw rows of ``batch``; with ``flip_tta`` each summed with its mirror image's, both in one pass
        (normalized by the caller)."""
        if not flip_tta:
            return np.asarray(self.forward(batch), dtype=np.float32)
        rows = np.asarray(self.forward(np.concatenate([batch, batch[:, :, ::-1, :]])), dtype=np.float32)
        return rows[:len(batch)] + rows[len(batch):]

    def embed_batches(self, batches: Iterable[Any], flip_tta: bool = False, timing: dict | None = None,
                      normalize: bool = True) -> np.ndarray:
        """Model inputs in batches (arrays or tensors [N, S, S, 3], e.g. a tf.data dataset's) -> their rows,
        unit length unless ``normalize`` is off (a backbone's features). ``timing``, when given, receives the
        images and seconds after the first batch, which pays for tracing and says nothing of the model's speed."""
        outputs, start = [], time.perf_counter()
        for batch in batches:
            outputs.append(self._embed_batch(np.asarray(batch, dtype=np.float32), flip_tta))
            if len(outputs) == 1:
                start = time.perf_counter()
        if not outputs:
            raise EmbeddingError("there are no images to embed")
        if timing is not None:
            timing.update(images=sum(len(o) for o in outputs[1:]), seconds=time.perf_counter() - start)
        rows = np.concatenate(outputs)
        return l2_normalize(rows) if normalize else rows

    def embed(self, paths: Sequence[str], batch_size: int = 32, flip_tta: bool = False,
              on_no_face: str = "fail") -> np.ndarray:
        """Unit-length embeddings [N, D] float32 of image files, in the order given: one row per file, so a photo
        without a usable face fails (``on_no_face='fail'``) or is read whole (``'whole'``); :meth:`embed_many`
        skips it instead."""
        if on_no_face == "skip":
            raise EmbeddingError("embed() returns one row per image and cannot skip; use embed_many() to leave "
                                 "photos without a face out")
        return self.embed_many(paths, batch_size, flip_tta, on_no_face).embeddings

    def embed_many(self, paths: Sequence[str], batch_size: int = 32, flip_tta: bool = False,
                   on_no_face: str = "skip") -> Embedded:
        """Image files -> :class:`Embedded`. A photo without a usable face is left out and reported (``skip``),
        stops the batch (``fail``), or is embedded whole (``whole``, as deepface's ``enforce_detection=False``).
        A kept photo's embedding does not depend on the others: faceless rows never reach the model."""
        check_on_no_face(on_no_face)
        if batch_size < 1:
            raise EmbeddingError(f"batch_size={batch_size} must be >= 1")
        paths = [str(p) for p in paths]
        if not paths:
            raise EmbeddingError("no images to embed; pass at least one image file")
        parts = [self._embed_chunk([read_image_bytes(p) for p in paths[start:start + batch_size]],
                                   paths[start:start + batch_size], start, flip_tta, on_no_face)
                 for start in range(0, len(paths), batch_size)]
        return Embedded.join(parts)

    def embed_encoded(self, images: Sequence[bytes], names: Sequence[str] | None = None,
                      flip_tta: bool = False, on_no_face: str = "fail") -> Embedded:
        """Encoded images (a server's request) -> :class:`Embedded`, exactly as :meth:`embed_many` computes them
        for files with the same bytes: the same alignment, input function, flip rule and faceless rule."""
        check_on_no_face(on_no_face)
        if not images:
            raise EmbeddingError("no images to embed; send at least one image")
        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        return Embedded.join([self._embed_chunk(list(images), names, 0, flip_tta, on_no_face)])

    def _embed_chunk(self, contents: list[bytes], names: list[str], offset: int, flip_tta: bool,
                     on_no_face: str) -> Embedded:
        prepared = self.prepare(contents, names, on_no_face, offset)
        return prepared.embedded(self._embed_batch(prepared.inputs, flip_tta) if prepared.kept else None)

    def prepare(self, contents: Sequence[bytes], names: Sequence[str], on_no_face: str,
                offset: int = 0) -> Prepared:
        """Encoded images -> the model inputs of the photos kept under the faceless rule, before any forward pass."""
        images = self.decode(contents, names)
        return self.prepare_decoded(images, names, self.detect(images), on_no_face, offset)

    def prepare_decoded(self, images: Sequence[np.ndarray], names: Sequence[str],
                        faces: Sequence[Sequence[Any]] | None, on_no_face: str, offset: int = 0) -> Prepared:
        """:meth:`prepare` from decoded photos and their faces: a server (:mod:`arcface.mlops.serving`) decodes each
        request's photos, detects the faces of concurrent requests' photos in one detector call and embeds
        their inputs in one forward pass; :meth:`Prepared.embedded` then finishes each request as
        :meth:`embed_encoded` would have."""
        batch, faceless = self.inputs_from(images, names, faces)
        if faceless and on_no_face == "fail":
            raise EmbeddingError(no_face_message(faceless))
        faceless = [dataclasses.replace(f, index=f.index + offset) for f in faceless]  # positions in the whole input
        skipped = faceless if on_no_face == "skip" else []
        dropped = {f.index for f in skipped}
        kept = [offset + i for i in range(len(names)) if offset + i not in dropped]
        return Prepared(batch[[i - offset for i in kept]], kept, skipped, faceless if on_no_face == "whole" else [])




def check_on_no_face(on_no_face: str) -> None:
    if on_no_face not in NO_FACE_CHOICES:
        raise EmbeddingError(f"--on_no_face={on_no_face!r} is unknown; choose one of: {', '.join(NO_FACE_CHOICES)}")


@dataclasses.dataclass(frozen=True)
class NoFace:
    """A photo in which the detector found no usable face: which (its position and name), why, and the fix."""

    index: int
    name: str
    code: str       # a code of arcface.data.align.CODES: no_face, low_score, face_too_small
    message: str
    fix: str

    @classmethod
    def from_finding(cls, index: int, name: str, finding: str) -> NoFace:
        code, _, message = finding.partition(": ")  # inputs_from_alignments reports 'code: message'
        return cls(index, name, code, message, CODES[code][2] + WHOLE_IMAGE_HINT)

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": f"{self.name}: {self.message}", "fix": self.fix}

    def __str__(self) -> str:
        return f"{self.name}: {self.code}: {self.message}; {self.fix}"


# Each photo's own fix comes from the detector's codes; reading it whole is the way out for a pre-cropped face.
WHOLE_IMAGE_HINT = " (or pass --on_no_face whole, or --align none, to use the whole image)"


def no_face_message(faceless: Sequence[NoFace]) -> str:
    more = f" (and {len(faceless) - 1} more in this batch)" if len(faceless) > 1 else ""
    return f"{faceless[0]}{more}"


@dataclasses.dataclass
class Embedded:
    """Embeddings of the photos kept, which they are, and the photos left out or read whole for want of a face."""

    embeddings: np.ndarray            # [len(kept), D] unit length, in input order
    kept: list[int]                   # the input position of each row
    skipped: list[NoFace]             # left out (on_no_face='skip')
    whole: list[NoFace] = dataclasses.field(default_factory=list)  # embedded whole (on_no_face='whole')

    @classmethod
    def join(cls, parts: Sequence[Embedded]) -> Embedded:
        rows = [p.embeddings for p in parts if len(p.kept)]  # a chunk with every photo skipped has no width
        return cls(np.concatenate(rows) if rows else np.zeros((0, 0), np.float32), [i for p in parts for i in p.kept],
                   [f for p in parts for f in p.skipped], [f for p in parts for f in p.whole])

    def rows(self) -> list[np.ndarray | None]:
        """One entry per input: its embedding, or None where it was skipped."""
        out: list[np.ndarray | None] = [None] * (len(self.kept) + len(self.skipped))
        for row, index in zip(self.embeddings, self.kept, strict=True):
            out[index] = row
        return out


@dataclasses.dataclass
class Prepared:
    """Photos ready for the model: the inputs [len(kept), S, S, 3] of the photos kept, and the faceless ones."""

    inputs: np.ndarray
    kept: list[int]
    skipped: list[NoFace]
    whole: list[NoFace]

    def embedded(self, raw: np.ndarray | None) -> Embedded:
        """The forward pass's rows for ``inputs`` (flip already summed in) -> :class:`Embedded`."""
        embeddings = l2_normalize(raw) if self.kept else np.zeros((0, 0), np.float32)
        return Embedded(embeddings, self.kept, self.skipped, self.whole)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def read_image_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise EmbeddingError(f"image {path} cannot be read ({e.strerror}); check the path") from None


def decode_upright(contents: bytes, name: str) -> np.ndarray:
    """Encoded bytes -> the upright uint8 [H, W, 3] image (EXIF orientation applied, as ``model_input`` reads
    it); unreadable bytes are an error naming them."""
    import tensorflow as tf

    try:
        return upright_image(contents)
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
        raise EmbeddingError(f"{name} is not a readable image ({e.message.splitlines()[0]}); use JPEG, PNG, "
                             "GIF, BMP or binary PGM/PPM") from None


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------
def _keras_forward(model) -> Callable[[np.ndarray], np.ndarray]:
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def step(x):
        return model(x, training=False)

    return lambda batch: step(tf.constant(batch)).numpy()


def _saved_model_forward(path: str) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    if TENSOR_SIGNATURE not in loaded.signatures:
        raise EmbeddingError(f"SavedModel {path} has no '{TENSOR_SIGNATURE}' signature (it has "
                             f"{', '.join(loaded.signatures) or 'none'}); export it with `arcface export`")
    signature = loaded.signatures[TENSOR_SIGNATURE]
    image_size = int(signature.structured_input_signature[1]["image"].shape[1])
    return (lambda batch: signature(image=tf.constant(batch))[OUTPUT_KEY].numpy()), image_size


def _from_keras_file(path: str, folder: str) -> Embedder:
    """A .keras file; a model card or metadata next to it (an export or run folder) says what it expects."""
    model = artifacts.load_keras(path)
    return Embedder.of_keras(model, read_model_input(folder, image_size=int(model.input_shape[1])), path)




def load_embedder(path: str | os.PathLike, align: str | None = None) -> Embedder:
    """An :class:`Embedder` from a training run's folder, a ``.keras`` file or an export folder.

    ``align`` (mtcnn | none) overrides the alignment the model records; None or 'auto' follows it.
    Every ``.keras`` file is loaded in safe mode: one that carries code (a Lambda layer) is refused.
    """
    if align not in (None, *ALIGN_CHOICES):
        raise EmbeddingError(f"--align={align!r} is unknown; choose one of: {', '.join(ALIGN_CHOICES)}")
    embedder = _load_embedder(str(path))
    if align not in (None, "auto"):
        embedder.model_input = dataclasses.replace(embedder.model_input, alignment=align)
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
        return Embedder.of_keras(trained.embedding_model, read_model_input(path, trained.image_size, trained.config.center_crop),
                                  path)
    if os.path.isfile(os.path.join(path, ExportDir.KERAS_FILE)):  # an export: the .keras file loads fastest
        return _from_keras_file(os.path.join(path, ExportDir.KERAS_FILE), path)
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
    return Embedder(forward, read_model_input(folder, image_size), saved_model)


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


#: ``arcface embed``'s exit status when photos without a usable face were skipped (the others are written).
EXIT_SKIPPED = 3


def embed_command(model: str, images: Sequence[str], output: str, fmt: str | None = None,
                  align: str | None = None, on_no_face: str = "skip") -> int:
    check_on_no_face(on_no_face)
    fmt = _output_format(output, fmt)
    paths = expand_images(images)
    embedder = load_embedder(model, align)
    result = embedder.embed_many(paths, on_no_face=on_no_face)
    report_no_face(result.skipped, result.whole)
    if not result.kept:
        raise EmbeddingError(f"none of the {len(paths)} image(s) has a usable face, nothing written to {output}; "
                             "pass --on_no_face whole (or --align none) when they are face crops already")
    kept_paths = [paths[i] for i in result.kept]
    write_embeddings(output, kept_paths, result.embeddings, fmt)
    order = " (rows in the order of the paths given, folders expanded sorted" if fmt == "npy" else ""
    order += (", skipped photos left out)" if result.skipped else ")") if order else ""
    skipped = f"; skipped {len(result.skipped)} of {len(paths)} photos without a usable face" if result.skipped else ""
    print(f"wrote {len(kept_paths)} embeddings of size {result.embeddings.shape[1]} to {output}{order}{skipped}")
    return EXIT_SKIPPED if result.skipped else 0


def report_no_face(skipped: Sequence[NoFace], whole: Sequence[NoFace] = ()) -> None:
    """One line per photo skipped or read whole (file, code, message, fix) on stderr: the output stays data."""
    for problem in skipped:
        print(f"skipped {problem}", file=sys.stderr)
    for problem in whole:
        print(f"embedded whole {problem.name}: {problem.code}: {problem.message}", file=sys.stderr)


def compare_command(model: str, a: str, b: str, threshold: float | None = None, align: str | None = None,
                    on_no_face: str = "fail") -> int:
    """Two photos, one answer: a photo without a usable face fails it, or is read whole (``on_no_face='whole'``)."""
    embedder = load_embedder(model, align)
    # The evaluated threshold holds for embeddings computed the way the evaluation computed them.
    flip = embedder.threshold_flip_tta if threshold is None else False
    ea, eb = embedder.embed([a, b], flip_tta=flip, on_no_face=on_no_face)
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


def identity_centres(embedder: Embedder, identities: dict[str, list[str]], flip_tta: bool = False,
                     on_no_face: str = "fail") -> tuple[np.ndarray, list[str], list[NoFace]]:
    """[identities, D]: the mean of each identity's unit embeddings, renormalized to unit length; the identities
    (one left with no photo kept is left out) and the photos skipped for want of a face."""
    paths = [p for images in identities.values() for p in images]
    owner = [name for name, images in identities.items() for _ in images]
    result = embedder.embed_many(paths, flip_tta=flip_tta, on_no_face=on_no_face)
    rows: dict[str, list[np.ndarray]] = {}
    for index, embedding in zip(result.kept, result.embeddings, strict=True):
        rows.setdefault(owner[index], []).append(embedding)
    if not rows:
        raise EmbeddingError("no gallery photo has a usable face: " + "; ".join(map(str, result.skipped)))
    names = [name for name in identities if name in rows]
    return l2_normalize(np.stack([np.mean(rows[name], axis=0) for name in names])), names, result.skipped


def search_command(model: str, gallery_dir: str, probe: str, top_k: int = 5, align: str | None = None,
                   on_no_face: str = "skip") -> int:
    """``on_no_face`` is for the gallery's photos; the one probe is embedded whole with 'whole', else must
    show a face."""
    check_on_no_face(on_no_face)
    if top_k < 1:
        raise EmbeddingError(f"--top_k={top_k} must be >= 1")
    embedder = load_embedder(model, align)
    identities = gallery_identities(gallery_dir)
    flip = embedder.threshold_flip_tta
    centres, names, skipped = identity_centres(embedder, identities, flip_tta=flip, on_no_face=on_no_face)
    report_no_face(skipped)
    probe_rule = "whole" if on_no_face == "whole" else "fail"
    similarities = centres @ embedder.embed([probe], flip_tta=flip, on_no_face=probe_rule)[0]
    order = np.argsort(-similarities, kind="stable")[:top_k]
    print(f"top {len(order)} of {len(names)} identities for {probe}:")
    for rank, index in enumerate(order, start=1):
        print(f"{rank:3d}  {similarities[index]:.4f}  {names[index]}")
    return EXIT_SKIPPED if skipped else 0
