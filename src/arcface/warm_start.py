"""Where a training run starts: from scratch, from the model store's champion, or from a model on disk.

``--init_from`` (the original tool's ``--use_param_folder`` is the same flag) takes:

- nothing: random weights, as before;
- ``champion``: the current version of ``--model_store`` (the pipeline's default when its store holds one);
- a path: a run's ``save_path``, an export folder, a store version folder (or its ``assets.extra/``), a
  ``.keras`` model or ``.h5`` weights file.

The backbone's weights load as they are; the run's backbone, input size and embedding size must be the
source's (an error names both sides). The margin head is rebuilt for this run's identities, matched **by class
name**: an identity the source was trained on keeps its row, a new one starts from the mean embedding of its
training images under the loaded backbone (``--head_init random``: random rows), an identity that is gone is
dropped. Where the source has no head or no class names (an export made before ``head.npz``, a bare file), every
row is new, and the log says so. The source is only read; what the run started from (path and sha256, and the
store version) is recorded in its metadata, its model card and the store's lineage.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from arcface.artifacts import file_sha256, load_keras
from arcface.contracts import ExportDir, ModelDir
from arcface.mlops.store import EXTRA_DIR, ModelStore

log = logging.getLogger(__name__)

CHAMPION = "champion"
HEAD_FILE = ModelDir.HEAD_FILE
# Faces an .onnx start's BatchNorm statistics are measured on: a few hundred settle them (arcface import's advice).
ONNX_CALIBRATION_IMAGES = 256


class StartError(ValueError):
    """The model to start from cannot be used; the message names it and what to do."""


@dataclasses.dataclass(frozen=True)
class Head:
    """A margin head's rows (``[C, D]``, one per identity) and the identities, in row order."""

    class_names: tuple[str, ...]
    centers: np.ndarray

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "wb") as f:
            np.savez(f, class_names=np.array(self.class_names, dtype=str), centers=self.centers.astype(np.float32))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Head:
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(tuple(str(n) for n in data["class_names"]), np.asarray(data["centers"], np.float32))
        except (OSError, ValueError, KeyError) as e:
            raise StartError(f"{path} is not a head file (class_names and centers): {e}") from None


@dataclasses.dataclass(frozen=True)
class StartingPoint:
    """A resolved ``--init_from``: the model file whose backbone loads, and what is known about it."""

    given: str
    model_file: str  # .keras (a training or an embedding model), .h5 weights, or an insightface .onnx
    sha256: str
    head: Head | None = None  # None: no rows to keep (every identity starts fresh)
    class_names: tuple[str, ...] | None = None  # the source's identities where known (with or without rows)
    architecture: dict[str, Any] = dataclasses.field(default_factory=dict)  # backbone, image_size, embedding_size
    store: str | None = None
    store_version: int | None = None

    def record(self) -> dict[str, Any]:
        """What metadata.json, the model card and the store's lineage say the run started from."""
        record = {"init_from": self.given, "path": self.model_file, "sha256": self.sha256}
        if self.store_version is not None:
            record.update(store=self.store, version=self.store_version)
        return record


def resolve(given: str, *, model_store: str = "", model_name: str = "arcface") -> StartingPoint | None:
    """The model ``given`` names (None for an empty value); never modifies it."""
    given = (given or "").strip()
    if not given:
        return None
    if given == CHAMPION:
        return _champion(model_store, model_name)
    path = os.path.abspath(os.path.expanduser(given))
    if not os.path.exists(path):
        raise StartError(f"--init_from={given!r}: {path} does not exist; pass a run's save_path, an export "
                         f"folder, a model store version, a .keras, .h5 or insightface .onnx file, or '{CHAMPION}' with "
                         "--model_store")
    if os.path.isdir(path):
        return _from_folder(given, path)
    return _from_file(given, path, folder_metadata=_sibling_metadata(path))


def _champion(model_store: str, model_name: str) -> StartingPoint:
    if not model_store:
        raise StartError(f"--init_from={CHAMPION} needs --model_store (the store whose current version to start "
                         "from); give one, or a path to the model")
    store = ModelStore(model_store, model_name)
    version = store.current()
    if version is None:
        raise StartError(f"--init_from={CHAMPION}: the model store {store.folder} has no current version yet; "
                         "train the first one from scratch (leave --init_from empty)")
    start = _from_folder(CHAMPION, store.extra_dir(version))
    return dataclasses.replace(start, store=store.folder, store_version=version)


def _from_folder(given: str, folder: str) -> StartingPoint:
    if os.path.isdir(os.path.join(folder, EXTRA_DIR)):  # a store version: the models are in assets.extra/
        start = _from_folder(given, os.path.join(folder, EXTRA_DIR))
        return dataclasses.replace(start, store=os.path.dirname(folder), store_version=_store_version(folder))
    head_file = os.path.join(folder, HEAD_FILE)
    head = Head.load(head_file) if os.path.isfile(head_file) else None
    embedding = os.path.join(folder, ModelDir.EMBEDDING_MODEL_FILE)
    if os.path.isfile(embedding):  # a run's save_path
        start = _from_file(given, embedding, _read_json(os.path.join(folder, ModelDir.METADATA_FILE)))
        return dataclasses.replace(start, head=head)
    exported = os.path.join(folder, ExportDir.KERAS_FILE)
    if os.path.isfile(exported):  # an export (or a store version's assets.extra/)
        card = _read_json(os.path.join(folder, ExportDir.CARD_JSON))
        start = _from_file(given, exported, folder_metadata=_card_metadata(card))
        version = _store_version(os.path.dirname(folder)) if os.path.basename(folder) == EXTRA_DIR else None
        return dataclasses.replace(start, head=head, class_names=head.class_names if head else None,
                                   store=os.path.dirname(os.path.dirname(folder)) if version else None,
                                   store_version=version)
    for pattern in ("*.weights.h5", "*.keras", "*.h5"):  # the original tool's folder of weights
        found = sorted(glob.glob(os.path.join(folder, pattern)))
        if found:
            return _from_file(given, found[0], folder_metadata=_read_json(os.path.join(folder,
                                                                                        ModelDir.METADATA_FILE)))
    raise StartError(f"--init_from={given!r}: {folder} holds no model (no {ModelDir.EMBEDDING_MODEL_FILE}, "
                     f"{ExportDir.KERAS_FILE}, .keras or .h5 file); pass a run's save_path, an export folder or "
                     "a model store version")


def _from_file(given: str, path: str, folder_metadata: dict[str, Any]) -> StartingPoint:
    if not path.endswith((".keras", ".h5", ".onnx")):
        raise StartError(f"--init_from={given!r}: {path} is neither a .keras model, .h5 weights nor an insightface "
                         ".onnx model; pass one of those, a run's save_path or an export folder")
    names = folder_metadata.get("class_names")
    return StartingPoint(given=given, model_file=path, sha256=file_sha256(path),
                         class_names=tuple(names) if isinstance(names, list) else None,
                         architecture={k: folder_metadata[k] for k in ("backbone", "image_size", "embedding_size")
                                       if folder_metadata.get(k) is not None})


def _sibling_metadata(path: str) -> dict[str, Any]:
    return _read_json(os.path.join(os.path.dirname(path), ModelDir.METADATA_FILE))


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except (OSError, ValueError) as e:
        raise StartError(f"{path} is not readable JSON ({e}); it describes the model to start from: restore it "
                         "or start from another model") from None
    return document if isinstance(document, dict) else {}


def _card_metadata(card: dict[str, Any]) -> dict[str, Any]:
    config = card.get("config") or {}
    return {"backbone": config.get("backbone"), "image_size": (card.get("input") or {}).get("image_size"),
            "embedding_size": card.get("embedding_size")}


def _store_version(version_folder: str) -> int | None:
    name = os.path.basename(os.path.normpath(version_folder))
    return int(name) if name.isdigit() else None


# ---------------------------------------------------------------------------------------------------------
# Loading into a run
# ---------------------------------------------------------------------------------------------------------
def check_architecture(start: StartingPoint, source_backbone, config) -> None:
    """The source's backbone, input size and embedding size against the run's, each named on both sides."""
    found = {"backbone": start.architecture.get("backbone", source_backbone.name),
             "image_size": int(source_backbone.input_shape[1]),
             "embedding_size": int(source_backbone.output_shape[-1])}
    wanted = {"backbone": config.backbone, "image_size": config.image_size, "embedding_size": config.embedding_size}
    different = [k for k in wanted if str(found[k]) != str(wanted[k])]
    if different:
        raise StartError(
            f"{start.model_file} holds a model with "
            + ", ".join(f"{k}={found[k]!r}" for k in different) + "; this run has "
            + ", ".join(f"--{k}={wanted[k]!r}" for k in different)
            + ": pass the source's values to start from it, or leave --init_from empty to start from scratch")


def head_rows(target_names: Sequence[str], source: Head | None, new_rows: np.ndarray) -> tuple[np.ndarray, dict]:
    """This run's head rows: the source's row for an identity it knows (by name), else the row in ``new_rows``
    (``[len(target_names), D]``, this run's initial rows, in target order). Returns the rows and counts."""
    rows = np.array(new_rows, dtype=np.float32, copy=True)
    known = {name: i for i, name in enumerate(source.class_names)} if source is not None else {}
    kept = [j for j, name in enumerate(target_names) if name in known]
    if kept:
        if source.centers.shape[1] != rows.shape[1]:
            raise StartError(f"the source's head has {source.centers.shape[1]}-d rows, this run "
                             f"{rows.shape[1]}-d embeddings; pass the source's --embedding_size")
        rows[kept] = source.centers[[known[target_names[j]] for j in kept]]
    gone = len(set(known) - set(target_names))
    return rows, {"kept": len(kept), "new": len(target_names) - len(kept), "dropped": gone}


def mean_embeddings(backbone, batches, n_classes: int) -> np.ndarray:
    """Each identity's mean unit embedding over ``batches`` of (images, labels), unit length again; an identity
    with no image keeps a zero row (its caller replaces it)."""
    sums = None
    for images, labels in batches:
        features = np.asarray(backbone(images, training=False), np.float64)
        features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        if sums is None:
            sums = np.zeros((n_classes, features.shape[1]))
        np.add.at(sums, np.asarray(labels), features)
    if sums is None:
        raise StartError("no training images to compute the new identities' head rows from")
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return np.where(norms > 0, sums / np.maximum(norms, 1e-12), 0.0).astype(np.float32)


def head_rows_of(head) -> np.ndarray:
    """A head's per-identity rows, ``[C, D]``: a margin head's centres, a softmax head's kernel columns."""
    weights = head.get_weights()
    return np.asarray(weights[0].T if hasattr(head, "dense") else weights[0], np.float32)


def set_head_rows(head, rows: np.ndarray) -> None:
    weights = head.get_weights()
    # A softmax head's bias is not carried over (head.npz holds rows only): it starts at zero, as when built.
    head.set_weights([rows.T, np.zeros_like(weights[1])] if hasattr(head, "dense") else [rows])


def start_trainer(trainer, start: StartingPoint) -> str:
    """Load ``start`` into a built Trainer (its backbone, then its head's rows by class name); the log line."""
    if start.model_file.endswith(".h5"):
        return _start_from_weights_file(trainer, start)
    if start.model_file.endswith(".onnx"):
        return _start_from_onnx(trainer, start)
    import keras

    config = trainer.config
    source = load_keras(start.model_file)
    nested = [layer for layer in source.layers if isinstance(layer, keras.Model)]
    source_backbone = nested[0] if nested else source
    check_architecture(start, source_backbone, config)
    try:
        trainer.backbone.set_weights(source_backbone.get_weights())
    except ValueError as e:
        raise StartError(f"{start.model_file}: its backbone's weights do not fit this run's "
                         f"--backbone={config.backbone} ({e}); start from a model of the same backbone") from None
    head = start.head
    if head is None and start.class_names and "head" in {layer.name for layer in source.layers}:
        head = Head(start.class_names, head_rows_of(source.get_layer("head")))  # a training model file
    if head is not None and len(head.class_names) != head.centers.shape[0]:
        raise StartError(f"{start.model_file}: its head has {head.centers.shape[0]} rows for "
                         f"{len(head.class_names)} class names; the source is inconsistent: start from another")
    if head is None:
        log.warning("--init_from %s: the source holds no class names with head rows (an export without %s, a "
                    "bare file, an insightface model), so every identity's head row starts fresh", start.given,
                    HEAD_FILE)
    names = list(trainer.class_names)
    fresh = head_rows_of(trainer.head)
    known = set(head.class_names) if head is not None else set()
    if config.head_init == "mean_embedding" and any(name not in known for name in names):
        fresh = _mean_embedding_rows(trainer, fresh, head, known)
    rows, counts = head_rows(names, head, fresh)
    set_head_rows(trainer.head, rows)
    where = f"version {start.store_version} of {start.store}" if start.store_version is not None else start.model_file
    return (f"starting from {where} (sha256 {start.sha256[:12]}): backbone loaded; head rows by identity: "
            f"{counts['kept']} kept, {counts['new']} new ({config.head_init.replace('_', ' ')}), "
            f"{counts['dropped']} dropped")


def _mean_embedding_rows(trainer, fresh: np.ndarray, head: Head | None, known: set[str]) -> np.ndarray:
    """Each identity's mean embedding under the loaded backbone, at the length of the rows it joins (the
    kept rows', else the initial ones'), so the optimizer moves new and kept rows alike."""
    config = trainer.config
    batches = trainer.make_dataset(trainer.manifest, "train", image_size=config.image_size,
                                   batch_size=max(config.batch_size, 32), training=False,
                                   center_crop=config.center_crop)
    means = mean_embeddings(trainer.backbone, batches, len(trainer.class_names))
    kept = [head.centers[i] for i, name in enumerate(head.class_names) if name in set(trainer.class_names)] \
        if head is not None else []
    length = float(np.median(np.linalg.norm(kept if kept else fresh, axis=1)))
    seen = np.linalg.norm(means, axis=1) > 0
    return np.where(seen[:, None], means * length, fresh).astype(np.float32)


def _start_from_weights_file(trainer, start: StartingPoint) -> str:
    """.h5 weights (the original tool's files): loaded by layer; a head of another shape stays as built."""
    before = trainer.head.get_weights()  # not head.weights: sharded centres are no Keras weight
    try:
        trainer.training_model.load_weights(start.model_file, skip_mismatch=True)
    except Exception as e:  # noqa: BLE001 - h5 readers raise many kinds; all mean "not these weights"
        raise StartError(f"cannot load weights from {start.model_file}: {e}") from None
    unchanged = all(np.array_equal(b, w) for b, w in zip(before, trainer.head.get_weights(), strict=True))
    if unchanged:
        return (f"loaded the backbone from {start.model_file}; the head's shape differs (another n_classes), so "
                "it was re-initialized")
    return f"loaded backbone and head from {start.model_file}"


def _start_from_onnx(trainer, start: StartingPoint) -> str:
    """An insightface .onnx file: imported as `arcface import` does (checked against onnxruntime), its folded
    BatchNorms calibrated on this run's training faces, so the first steps in training mode compute what the
    file computes; then started from like any model folder. The import is a scratch folder: the run records
    the .onnx file and its sha256 as where it started."""
    from arcface.models.insightface import MIN_CALIBRATION_IMAGES, InsightfaceImportError, import_onnx

    faces = trainer.manifest.absolute_paths("train")[:ONNX_CALIBRATION_IMAGES]
    if len(faces) < MIN_CALIBRATION_IMAGES:
        log.warning("%s: only %d training images, fewer than the %d its BatchNorm statistics need: those layers "
                    "start as the identity", start.model_file, len(faces), MIN_CALIBRATION_IMAGES)
    with tempfile.TemporaryDirectory(prefix="arcface-import-") as scratch:
        folder = os.path.join(scratch, "imported")
        try:
            result = import_onnx(start.model_file, folder,
                                 calibration_images=faces if len(faces) >= MIN_CALIBRATION_IMAGES else None)
        except InsightfaceImportError as e:
            raise StartError(f"--init_from={start.given!r}: {e}") from None
        line = start_trainer(trainer, _from_folder(start.given, folder))
    _, _, loaded = line.partition("): ")  # what was loaded, said of the scratch folder's model
    calibrated = f"{len(faces)} training faces" if len(faces) >= MIN_CALIBRATION_IMAGES else "none (identity)"
    return (f"starting from {start.model_file} (sha256 {start.sha256[:12]}; imported as {result.backbone}, lowest "
            f"cosine to onnxruntime {result.parity['min_cosine']:.7f}, BatchNorm statistics from {calibrated}): "
            f"{loaded}")


def pipeline_init_from(init_from: str, model_store: str, model_name: str, warm_start: bool) -> str:
    """The pipeline's default: the store's champion when ``warm_start`` and the store holds one; a given
    ``init_from`` always wins."""
    if (init_from or "").strip() or not warm_start or not model_store:
        return init_from or ""
    has_champion = ModelStore(model_store, model_name).current() is not None
    log.info("warm_start: %s", f"starting from the champion of {model_store}" if has_champion
             else f"{model_store} holds no champion yet: training from scratch")
    return CHAMPION if has_champion else ""
