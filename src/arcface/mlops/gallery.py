"""A persistent gallery index: enrolled faces searched without embedding the gallery again.

``arcface enroll --model M --gallery people/ --index IDX`` embeds ``people/<identity>/*`` once and writes the
folder IDX::

    index.json    schema version, the model that made the vectors, flip_tta, kind, one record per vector
                  (identity, path relative to the gallery, sha256 of the file's bytes)
    vectors.npy   the unit embeddings [N, D] float32, row i belongs to record i
    index.faiss   the faiss index over them: IndexFlatIP (exact), IndexHNSWFlat or IndexIVFFlat (approximate)

Enrolling again embeds only new or changed images (by sha256); images gone from the gallery leave the index.
faiss (faiss-cpu) is the search library: it has exact inner-product search (IndexFlatIP) and approximate
search (an HNSW graph, or inverted lists over k-means cells: IVF) behind one interface, reads and writes its indexes itself, and ships cp311 wheels built
against numpy 2. Vectors are unit length, so the inner product is the cosine similarity.

Every vector was made by one model; the index records which (:func:`model_identity`: the sha256 of the
export's model card, else the SavedModel's fingerprint, else the sha256 of the ``.keras`` file), and a probe
or an enrolment with another model is refused: cosines between two models' embeddings mean nothing.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from arcface import artifacts, atomic
from arcface.choices import GALLERY_KINDS
from arcface.contracts import ContractError, ExportDir, ModelDir, check_version
from arcface.embedding import (
    EXIT_SKIPPED,
    Embedder,
    NoFace,
    check_on_no_face,
    gallery_identities,
    load_embedder,
    report_no_face,
)
from arcface.model_input import read_model_input

log = logging.getLogger(__name__)

META_FILE = "index.json"
VECTORS_FILE = "vectors.npy"
FAISS_FILE = "index.faiss"
SCHEMA_VERSION = 1
KINDS = GALLERY_KINDS
HNSW_NEIGHBOURS = 32       # M: graph degree; 32 is faiss's usual choice for 512-d embeddings
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128       # candidates kept while searching: recall against query time
# IVF: sqrt(N) k-means cells trained on IVF_TRAIN_PER_CELL vectors each (k-means needs >= 39), and a query
# scans an eighth of them (at least IVF_MIN_PROBES): a million vectors build in about a minute on 2 cores,
# where the HNSW graph takes most of an hour, and a query reads ~12 % of the vectors.
IVF_MIN_PER_CELL = 39
IVF_TRAIN_PER_CELL = 64
IVF_PROBE_FRACTION = 8
IVF_MIN_PROBES = 16
PRODUCER = "`arcface enroll`"


class GalleryError(ValueError):
    """A gallery index cannot be used as asked; the message names the problem and the fix."""


# ---------------------------------------------------------------------------------------------------
# The model: where its card is, and which model it is
# ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class IdentifiedModel:
    """An embedder, the identity of the model behind it, and its model card ({} when there is none)."""

    embedder: Embedder
    model_id: str
    card: dict[str, Any]
    path: str


def _saved_model_dir(path: str) -> str | None:
    for candidate in (os.path.join(path, ExportDir.SAVED_MODEL_DIR), path):
        if os.path.isfile(os.path.join(candidate, "saved_model.pb")):
            return candidate
    return None


def find_card(path: str) -> str | None:
    """The model_card.json describing the model at ``path``: in its folder; for a bare SavedModel folder (a
    model-store version: saved_model.pb + variables/) also in its ``assets.extra/``, next to the folder, or in
    a sibling folder. A training run or a .keras file looks in its own folder only, so it never borrows the
    card of another model that happens to lie nearby."""
    path = os.path.abspath(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    if ExportDir.has_card(folder):
        return os.path.join(folder, ExportDir.CARD_JSON)
    if not os.path.isfile(os.path.join(folder, "saved_model.pb")):
        return None
    parent = os.path.dirname(folder)
    for candidate in (os.path.join(folder, "assets.extra"), parent):
        if ExportDir.has_card(candidate):
            return os.path.join(candidate, ExportDir.CARD_JSON)
    siblings = sorted(glob.glob(os.path.join(parent, "*", ExportDir.CARD_JSON)))
    return siblings[0] if len(siblings) == 1 else None


def model_identity(path: str, card_file: str | None) -> str:
    """``card:<sha256>`` of the model card; else ``saved_model:<fingerprint checksum>``; else
    ``keras:<sha256>`` of the .keras file (a training run's embedding model)."""
    if card_file:
        return "card:" + artifacts.file_sha256(card_file)
    if os.path.isfile(path):
        return "keras:" + artifacts.file_sha256(path)
    saved_model = _saved_model_dir(path)
    if saved_model:
        import tensorflow as tf

        return f"saved_model:{tf.saved_model.experimental.read_fingerprint(saved_model).saved_model_checksum}"
    for name in (ModelDir.EMBEDDING_MODEL_FILE, ExportDir.KERAS_FILE):
        if os.path.isfile(os.path.join(path, name)):
            return "keras:" + artifacts.file_sha256(os.path.join(path, name))
    raise GalleryError(f"cannot tell which model {path} holds (no model card, SavedModel or .keras file); pass an "
                       "export folder, a model-store version folder, a training run or a .keras file")


def load_model(path: str | os.PathLike) -> IdentifiedModel:
    """The one loader of the model server and the gallery: an export folder (model_card.json, saved_model/,
    model.keras), a model-store version folder (saved_model.pb + variables/, the card in ``assets.extra/`` or
    beside it), a training run or a .keras file. The card found by :func:`find_card` supplies the centre crop
    and the evaluated threshold wherever it lies."""
    path = os.fspath(path)
    embedder = load_embedder(path)
    card_file = find_card(path)
    card = ExportDir.read_card(card_file) if card_file else {}
    if card:  # a store version's card lies in assets.extra/, beside the files the embedder was loaded from
        model_input = read_model_input(os.path.dirname(card_file), embedder.image_size)
        embedder = dataclasses.replace(embedder, model_input=dataclasses.replace(
            model_input, alignment=embedder.align))
    return IdentifiedModel(embedder, model_identity(path, card_file), card, path)


# ---------------------------------------------------------------------------------------------------
# The index
# ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Record:
    identity: str
    path: str      # relative to the gallery folder
    sha256: str


@dataclasses.dataclass(frozen=True)
class Match:
    identity: str
    path: str
    score: float   # cosine similarity

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def ivf_cells(n: int) -> int:
    return max(1, min(int(np.sqrt(max(n, 1))), n // IVF_MIN_PER_CELL))


def ivf_probes(cells: int) -> int:
    return min(cells, max(IVF_MIN_PROBES, cells // IVF_PROBE_FRACTION))


def build_faiss(vectors: np.ndarray, kind: str):
    """A faiss index over unit vectors, inner-product metric: exact, an HNSW graph, or IVF (k-means cells
    trained on these vectors, so it is rebuilt, not extended, when the gallery changes)."""
    import faiss

    if kind not in KINDS:
        raise GalleryError(f"index kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
    dimension = int(vectors.shape[1])
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if kind == "exact":
        index = faiss.IndexFlatIP(dimension)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dimension, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    else:
        cells = ivf_cells(len(vectors))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dimension), dimension, cells, faiss.METRIC_INNER_PRODUCT)
        sample = vectors
        if len(vectors) > cells * IVF_TRAIN_PER_CELL:
            rows = np.random.default_rng(0).choice(len(vectors), cells * IVF_TRAIN_PER_CELL, replace=False)
            sample = vectors[np.sort(rows)]
        index.train(sample if len(sample) else np.zeros((1, dimension), np.float32))
        index.nprobe = ivf_probes(cells)
    if len(vectors):
        index.add(vectors)
    return index


@dataclasses.dataclass
class GalleryIndex:
    model_id: str
    flip_tta: bool
    kind: str
    gallery: str
    records: list[Record]
    vectors: np.ndarray
    model_path: str = ""   # where the model was when enrolling: the default model of `arcface search --index`
    faiss_index: Any = None

    def __post_init__(self) -> None:
        if self.faiss_index is None:
            self.faiss_index = build_faiss(self.vectors, self.kind)

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])

    def check_model(self, model_id: str, what: str = "the probe") -> None:
        if model_id != self.model_id:
            raise GalleryError(f"{what} was embedded by model {model_id}, but this index holds embeddings of model "
                               f"{self.model_id}: similarities across models mean nothing. Use the model the "
                               "index was enrolled with, or enroll the gallery again into a new --index with "
                               "this model")

    def search(self, embeddings: np.ndarray, model_id: str, top_k: int = 5) -> list[list[Match]]:
        """The ``top_k`` nearest enrolled faces of each probe embedding, best first."""
        self.check_model(model_id)
        if top_k < 1:
            raise GalleryError(f"top_k={top_k} must be >= 1")
        embeddings = np.ascontiguousarray(np.atleast_2d(embeddings), dtype=np.float32)
        if embeddings.shape[1] != self.dimension:
            raise GalleryError(f"probe embeddings have {embeddings.shape[1]} dimensions, the index "
                               f"{self.dimension}; embed the probe with the index's model")
        if self.kind == "hnsw":
            self.faiss_index.hnsw.efSearch = max(HNSW_EF_SEARCH, top_k)
        scores, rows = self.faiss_index.search(embeddings, min(top_k, len(self.records)))
        return [[Match(self.records[r].identity, self.records[r].path, float(s))
                 for s, r in zip(row_scores, row_ids, strict=True) if r >= 0]
                for row_scores, row_ids in zip(scores, rows, strict=True)]

    # -- files ---------------------------------------------------------------------------------------
    @staticmethod
    def exists(folder: str | os.PathLike) -> bool:
        return os.path.isfile(os.path.join(folder, META_FILE))

    def save(self, folder: str | os.PathLike) -> None:
        """Vectors and faiss index first, index.json last: a reader never sees records without their vectors."""
        import faiss

        os.makedirs(folder, exist_ok=True)
        with atomic.replacing(os.path.join(folder, VECTORS_FILE)) as tmp, open(tmp, "wb") as f:
            np.save(f, self.vectors)
        with atomic.replacing(os.path.join(folder, FAISS_FILE)) as tmp:
            faiss.write_index(self.faiss_index, tmp)
        atomic.write_json(os.path.join(folder, META_FILE), {
            "schema_version": SCHEMA_VERSION, "model_id": self.model_id, "flip_tta": self.flip_tta,
            "kind": self.kind, "dimension": self.dimension, "gallery": self.gallery, "model_path": self.model_path,
            "records": [dataclasses.asdict(r) for r in self.records]})

    @classmethod
    def load(cls, folder: str | os.PathLike) -> GalleryIndex:
        import faiss

        folder = os.fspath(folder)
        meta_file = os.path.join(folder, META_FILE)
        if not os.path.isfile(meta_file):
            raise GalleryError(f"{folder} is not a gallery index (no {META_FILE}); build one with "
                               "`arcface enroll --model M --gallery people/ --index " + folder + "`")
        with open(meta_file, encoding="utf-8") as f:
            meta = json.load(f)
        try:
            check_version(meta, SCHEMA_VERSION, meta_file, PRODUCER)
        except ContractError as e:
            raise GalleryError(str(e)) from None
        vectors = np.load(os.path.join(folder, VECTORS_FILE))
        records = [Record(**r) for r in meta["records"]]
        faiss_index = faiss.read_index(os.path.join(folder, FAISS_FILE))
        if not len(records) == len(vectors) == faiss_index.ntotal:
            raise GalleryError(f"{folder} is inconsistent ({len(records)} records, {len(vectors)} vectors, "
                               f"{faiss_index.ntotal} indexed); enroll the gallery again into a new --index")
        return cls(meta["model_id"], bool(meta["flip_tta"]), meta["kind"], meta["gallery"], records, vectors,
                   meta.get("model_path", ""), faiss_index)


# ---------------------------------------------------------------------------------------------------
# Enrolment
# ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class EnrollResult:
    index: GalleryIndex
    added: int
    changed: int
    unchanged: int
    removed: int
    skipped: list[NoFace] = dataclasses.field(default_factory=list)  # photos without a usable face, left out


def enroll(model: IdentifiedModel, gallery_dir: str, index_dir: str, kind: str = "exact",
           on_no_face: str = "skip") -> EnrollResult:
    """Embed the new or changed images of ``gallery_dir`` (``<identity>/`` folders) into the index at
    ``index_dir`` (created when absent); images no longer in the gallery leave it. Written atomically.
    A photo without a usable face is left out and reported (``on_no_face='skip'``; an enrolment again tries it
    again), stops the enrolment (``'fail'``) or is enrolled whole (``'whole'``)."""
    identities = gallery_identities(gallery_dir)
    gallery = os.path.abspath(gallery_dir)
    current = [Record(identity, os.path.relpath(p, gallery_dir), artifacts.file_sha256(p))
               for identity, paths in identities.items() for p in paths]
    flip = model.embedder.threshold_flip_tta  # probes are embedded the same way: the threshold's setting
    known: dict[tuple[str, str], np.ndarray] = {}
    old_paths: set[str] = set()
    if GalleryIndex.exists(index_dir):
        old = GalleryIndex.load(index_dir)
        old.check_model(model.model_id, what=f"the gallery {gallery_dir} (enrolled now)")
        if kind != old.kind:
            raise GalleryError(f"{index_dir} is an {old.kind!r} index; enroll into it with --kind {old.kind}, "
                               "or into a new --index")
        known = {(r.path, r.sha256): v for r, v in zip(old.records, old.vectors, strict=True)}
        old_paths = {r.path for r in old.records}
    todo = [r for r in current if (r.path, r.sha256) not in known]
    embedded = (model.embedder.embed_many([os.path.join(gallery_dir, r.path) for r in todo], flip_tta=flip,
                                          on_no_face=on_no_face) if todo else None)
    skipped = embedded.skipped if embedded else []
    if skipped:
        left_out = {todo[f.index].path for f in skipped}
        todo = [r for r in todo if r.path not in left_out]
        current = [r for r in current if r.path not in left_out]
        if not current:
            raise GalleryError(f"none of the photos of {gallery_dir} has a usable face: "
                               + "; ".join(map(str, skipped)))
    fresh_by_path = {r.path: v for r, v in zip(todo, embedded.embeddings if embedded else [], strict=True)}
    vectors = np.stack([known.get((r.path, r.sha256), fresh_by_path.get(r.path)) for r in current])
    index = GalleryIndex(model.model_id, flip, kind, gallery, current, vectors.astype(np.float32),
                         os.path.abspath(model.path))
    index.save(index_dir)
    current_paths = {r.path for r in current}
    changed = sum(r.path in old_paths for r in todo)
    return EnrollResult(index, added=len(todo) - changed, changed=changed, unchanged=len(current) - len(todo),
                        removed=len(old_paths - current_paths), skipped=skipped)


def search_index(model: IdentifiedModel, index: GalleryIndex, probes: Sequence[str],
                 top_k: int = 5) -> list[list[Match]]:
    """The nearest enrolled faces of each probe image file (embedded as the index's vectors were)."""
    index.check_model(model.model_id)
    return index.search(model.embedder.embed(list(probes), flip_tta=index.flip_tta), model.model_id, top_k)


# ---------------------------------------------------------------------------------------------------
# Commands (``arcface enroll``, ``arcface search --index``)
# ---------------------------------------------------------------------------------------------------
def enroll_command(model: str, gallery_dir: str, index_dir: str, kind: str = "exact", on_no_face: str = "skip") -> int:
    check_on_no_face(on_no_face)
    result = enroll(load_model(model), gallery_dir, index_dir, kind, on_no_face)
    report_no_face(result.skipped)
    skipped = f", {len(result.skipped)} skipped without a usable face" if result.skipped else ""
    print(f"index {index_dir}: {len(result.index.records)} faces of {len({r.identity for r in result.index.records})}"
          f" identities ({result.added} added, {result.changed} changed, {result.unchanged} unchanged, "
          f"{result.removed} removed{skipped}), {result.index.kind} search, model {result.index.model_id}")
    return EXIT_SKIPPED if result.skipped else 0


def search_index_command(model: str | None, index_dir: str, probe: str, top_k: int = 5) -> int:
    index = GalleryIndex.load(index_dir)
    if model is None and not os.path.exists(index.model_path):
        raise GalleryError(f"the model {index_dir} was enrolled with is no longer at {index.model_path!r}; pass "
                             f"--model with that model ({index.model_id})")
    matches = search_index(load_model(model or index.model_path), index, [probe], top_k)[0]
    print(f"top {len(matches)} of {len(index.records)} enrolled faces for {probe}:")
    for rank, match in enumerate(matches, start=1):
        print(f"{rank:3d}  {match.score:.4f}  {match.identity}  {match.path}")
    return 0
