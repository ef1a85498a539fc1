"""What each pipeline step writes: one definition per output folder, its file names, its reader and writer.

A step's output folder (a KFP artifact, or a ``--output_dir``) is read by the next step, by the quality gate,
by ``arcface compare`` and by ``pipeline.py``; each of them goes through the class here instead of parsing the
files itself, so the layout is defined once::

    ManifestDir    validate:  manifest.json, report.json, report.md
    AlignedDir     align:     manifest.json (rows = the crops), alignment.json, report.json, report.md, crops/
    ModelDir       train:     config.yaml, metadata.json, the two .keras models, best/, checkpoints/, logs/
    EvaluationDir  evaluate:  metrics.json (its "summary" is an EvaluationSummary), report.html
    ExportDir      export:    model_card.json/.md, saved_model/, model.keras, model*.tflite, model.onnx
    StoreVersion   promote:   <store>/<model>/<version>/assets.extra/lineage.json (arcface.mlops.store)

Every JSON file written here carries a schema version (``schema_version``; the manifest's own key is
``version``) and its reader refuses a file with another or no version, naming the step to re-run: a file
from another release is never half-understood. Writes go through :mod:`arcface.atomic`.

This module needs only the standard library, so the quality gate's light image can use it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from typing import TYPE_CHECKING, Any, ClassVar

from arcface import atomic
from arcface.data.manifest import Manifest
from arcface.schema import SCHEMA_KEY, ContractError, check_version

if TYPE_CHECKING:
    from arcface.data.align import AlignResult
    from arcface.data.validate import ValidationResult


def _in_folder(path: str | os.PathLike, file_name: str) -> str:
    """``path`` itself when it names a file; ``path/file_name`` when it is the step's output folder."""
    path = os.fspath(path)
    return os.path.join(path, file_name) if os.path.isdir(path) else path


def _load_json(path: str, producer: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except FileNotFoundError:
        raise ContractError(f"{path} does not exist; pass the output folder of {producer} (or the file in it), "
                            f"or run {producer} to write it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ContractError(f"{path} is not valid JSON ({e}); re-run {producer} to write it again") from None
    if not isinstance(document, dict):
        raise ContractError(f"{path} holds a JSON {type(document).__name__}, not an object; re-run {producer} "
                            "to write it again")
    return document


def _read_versioned(path: str, expected: int, producer: str) -> dict[str, Any]:
    document = _load_json(path, producer)
    check_version(document, expected, path, producer)
    return document


def _write_versioned(path: str | os.PathLike, version: int, document: dict[str, Any]) -> dict[str, Any]:
    """Write ``document`` with its schema version first; return what was written."""
    written = {SCHEMA_KEY: version, **{k: v for k, v in document.items() if k != SCHEMA_KEY}}
    atomic.write_json(path, written)
    return written


# ---------------------------------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------------------------------
class ManifestDir:
    """The validate step's Dataset artifact: the manifest training reads, and the findings for people."""

    MANIFEST_FILE = "manifest.json"
    REPORT_FILE = "report.json"
    REPORT_MD_FILE = "report.md"
    REPORT_SCHEMA_VERSION = 1
    PRODUCER = "the validate step (`arcface validate`)"

    @classmethod
    def write(cls, folder: str | os.PathLike, result: ValidationResult) -> dict[str, str]:
        """Write the manifest, report.json and report.md into ``folder``; return {file name: path}."""
        os.makedirs(folder, exist_ok=True)
        paths = {name: os.path.join(folder, name) for name in (cls.MANIFEST_FILE, cls.REPORT_FILE,
                                                                 cls.REPORT_MD_FILE)}
        result.manifest.write(paths[cls.MANIFEST_FILE])
        _write_versioned(paths[cls.REPORT_FILE], cls.REPORT_SCHEMA_VERSION, result.report)
        atomic.write_text(paths[cls.REPORT_MD_FILE], result.markdown())
        return paths

    @classmethod
    def read(cls, path: str | os.PathLike) -> Manifest:
        """The manifest in the folder ``path`` (or the manifest file ``path``); its version is checked."""
        return Manifest.read(_in_folder(path, cls.MANIFEST_FILE))

    @classmethod
    def read_report(cls, path: str | os.PathLike) -> dict[str, Any]:
        return _read_versioned(_in_folder(path, cls.REPORT_FILE), cls.REPORT_SCHEMA_VERSION, cls.PRODUCER)

    @classmethod
    def report_markdown_file(cls, folder: str | os.PathLike) -> str:
        return os.path.join(folder, cls.REPORT_MD_FILE)


# ---------------------------------------------------------------------------------------------------
# align
# ---------------------------------------------------------------------------------------------------
class AlignedDir(ManifestDir):
    """The align step's Dataset artifact: a manifest read exactly like the validate step's (``ManifestDir.read``
    works on it), whose rows are the face crops in crops/, plus alignment.json: the settings and, per source
    sha256, the source path, the crop, the box, the 5 points, the score and the findings.

    With ``--align none`` the folder holds the validate step's files unchanged (no crops, no alignment.json).
    A folder holding alignment.json and crops/ is also what a re-run takes as its cache.
    """

    RECORDS_FILE = "alignment.json"
    CROPS_DIR = "crops"
    RECORDS_SCHEMA_VERSION = 1
    PRODUCER = "the align step (`arcface align`)"

    @classmethod
    def crops_dir(cls, folder: str | os.PathLike) -> str:
        return os.path.join(os.path.abspath(folder), cls.CROPS_DIR)

    @classmethod
    def has_records(cls, folder: str | os.PathLike) -> bool:
        return os.path.isfile(os.path.join(folder, cls.RECORDS_FILE))

    @classmethod
    def read_records(cls, folder: str | os.PathLike) -> dict[str, Any]:
        return _read_versioned(_in_folder(folder, cls.RECORDS_FILE), cls.RECORDS_SCHEMA_VERSION, cls.PRODUCER)

    @classmethod
    def write(cls, folder: str | os.PathLike, result: AlignResult) -> dict[str, str]:  # type: ignore[override]
        """The aligned manifest (its roots relative: crops/ beside it), alignment.json and the report."""
        os.makedirs(folder, exist_ok=True)
        paths = {name: os.path.join(folder, name) for name in (cls.MANIFEST_FILE, cls.RECORDS_FILE,
                                                                 cls.REPORT_FILE, cls.REPORT_MD_FILE)}
        relative = dataclasses.replace(result.manifest, roots={split: cls.CROPS_DIR for split in result.manifest.roots})
        relative.write(paths[cls.MANIFEST_FILE])
        _write_versioned(paths[cls.RECORDS_FILE], cls.RECORDS_SCHEMA_VERSION, result.records)
        _write_versioned(paths[cls.REPORT_FILE], cls.REPORT_SCHEMA_VERSION, result.report)
        atomic.write_text(paths[cls.REPORT_MD_FILE], result.markdown())
        return paths

    @classmethod
    def update_cache(cls, cache: str | os.PathLike, folder: str | os.PathLike, records: dict[str, Any]) -> None:
        """Add the crops and records of ``folder`` (this run's output) to the cache folder ``cache``."""
        earlier = cls.read_records(cache) if cls.has_records(cache) else {}
        # Crops made under other settings would never be reused again: they are dropped from the records.
        kept = earlier.get("images", {}) if earlier.get("settings") == records["settings"] else {}
        for sha, record in records["images"].items():
            if record.get("crop") and sha not in kept:
                target = os.path.join(cls.crops_dir(cache), record["crop"])
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(os.path.join(cls.crops_dir(folder), record["crop"]), target)
        _write_versioned(os.path.join(cache, cls.RECORDS_FILE), cls.RECORDS_SCHEMA_VERSION,
                         {"settings": records["settings"], "images": {**kept, **records["images"]}})

    @classmethod
    def pass_through(cls, manifest_dir: str | os.PathLike, folder: str | os.PathLike) -> Manifest:
        """``--align none``: the validate step's manifest and report, unchanged, as this step's output."""
        manifest = ManifestDir.read(manifest_dir)
        os.makedirs(folder, exist_ok=True)
        manifest.write(os.path.join(folder, cls.MANIFEST_FILE))  # absolute roots: the data where it is
        for name in (cls.REPORT_FILE, cls.REPORT_MD_FILE):
            source = os.path.join(manifest_dir, name)
            if os.path.isfile(source):
                shutil.copyfile(source, os.path.join(folder, name))
        return manifest

    @staticmethod
    def alignment_of(manifest: Manifest) -> dict[str, Any]:
        """What a model trained on ``manifest`` expects: {'method': 'none'} or the alignment settings."""
        return dict(manifest.alignment) if manifest.alignment else {"method": "none"}


# ---------------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------------
class ModelDir:
    """The train step's model folder (its ``save_path``); :mod:`arcface.train` writes it and
    :func:`arcface.artifacts.load_model_dir` loads it (that needs Keras, which this module does not load).

    metadata.json carries no schema version yet: the trainer writes it, and it is read leniently.
    """

    CONFIG_FILE = "config.yaml"
    METADATA_FILE = "metadata.json"
    TRAINING_MODEL_FILE = "training_model.keras"
    EMBEDDING_MODEL_FILE = "embedding_model.keras"
    #: The margin head's rows and their identities (arcface.warm_start.Head), copied into the export and the
    #: store, so that a run started from this model keeps the rows of the identities it knows.
    HEAD_FILE = "head.npz"
    BEST_DIR = "best"
    CHECKPOINT_DIR = "checkpoints"
    LOG_DIR = "logs"

    @classmethod
    def read_metadata(cls, folder: str | os.PathLike) -> dict[str, Any]:
        """metadata.json of ``folder``; {} when there is none (a folder holding only a .keras model)."""
        path = os.path.join(folder, cls.METADATA_FILE)
        if not os.path.isfile(path):
            return {}
        return _load_json(path, "the train step (`arcface train`)")


# ---------------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------------
KFOLD_MEAN = "kfold_mean"
BEST_THRESHOLD = "best_threshold"
ACCURACY_KINDS = (KFOLD_MEAN, BEST_THRESHOLD)
_TAR_PREFIX = "tar_at_far_"


@dataclasses.dataclass(frozen=True)
class EvaluationSummary:
    """The headline numbers of an evaluation: metrics.json's ``"summary"``, what the gate and the card use.

    ``verification_accuracy`` is the LFW k-fold mean (``verification_accuracy_kind`` 'kfold_mean'), or, when
    there are too few genuine or impostor pairs for the folds, the best-threshold accuracy on all pairs
    ('best_threshold', optimistic: the threshold was chosen on the same pairs). ``threshold`` was chosen on
    embeddings computed with ``flip_tta``; compare at it only with the same setting. ``tar_at_far`` maps
    '1e-02' to the TAR at that FAR (None where there are too few impostor pairs to measure it).
    """

    verification_accuracy: float
    verification_accuracy_kind: str
    threshold: float
    auc: float
    eer: float
    genuine_pairs: int
    impostor_pairs: int
    flip_tta: bool
    verification_accuracy_std: float | None = None
    tar_at_far: dict[str, float | None] = dataclasses.field(default_factory=dict)
    top1_accuracy: float | None = None
    top5_accuracy: float | None = None
    images_per_second: float | None = None

    def __post_init__(self) -> None:
        if self.verification_accuracy_kind not in ACCURACY_KINDS:
            raise ContractError(f"verification_accuracy_kind={self.verification_accuracy_kind!r} is unknown; "
                                f"it is one of {', '.join(ACCURACY_KINDS)}")

    @property
    def accuracy_description(self) -> str:
        kind = "k-fold" if self.verification_accuracy_kind == KFOLD_MEAN else "best-threshold"
        return f"{kind} accuracy {self.verification_accuracy:.4f}"

    def to_dict(self) -> dict[str, Any]:
        """Flat, as metrics.json stores it (``tar_at_far_1e-02``), so every number is a KFP metric."""
        flat = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        tar = flat.pop("tar_at_far")
        tail = {key: flat.pop(key) for key in ("top1_accuracy", "top5_accuracy", "images_per_second")}
        return {**flat, **{_TAR_PREFIX + key: value for key, value in tar.items()}, **tail}

    @classmethod
    def from_dict(cls, flat: dict[str, Any], source: str = "the evaluation summary") -> EvaluationSummary:
        names = {field.name for field in dataclasses.fields(cls)} - {"tar_at_far"}
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if flat.get(name) is None]
        if missing:
            raise ContractError(f"{source} lacks {', '.join(missing)}; re-run the evaluate step "
                                "(`arcface evaluate`) to write a complete metrics.json")
        tar = {key[len(_TAR_PREFIX):]: value for key, value in flat.items() if key.startswith(_TAR_PREFIX)}
        return cls(**{key: value for key, value in flat.items() if key in names}, tar_at_far=tar)

    def kfp_metrics(self) -> dict[str, float]:
        """The numbers for ``Metrics.log_metric``: flags, words and unmeasured (None) figures left out."""
        return {key: float(value) for key, value in self.to_dict().items()
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)}


class EvaluationDir:
    """The evaluate step's Metrics artifact folder: metrics.json (every number) and report.html."""

    METRICS_FILE = "metrics.json"
    REPORT_FILE = "report.html"
    SCHEMA_VERSION = 1
    PRODUCER = "the evaluate step (`arcface evaluate`)"

    @classmethod
    def metrics_file(cls, path: str | os.PathLike) -> str:
        """metrics.json in the folder ``path``, or ``path`` itself when it is the file (``--metrics``)."""
        return _in_folder(path, cls.METRICS_FILE)

    @classmethod
    def report_file(cls, folder: str | os.PathLike) -> str:
        return os.path.join(folder, cls.REPORT_FILE)

    @classmethod
    def exists(cls, path: str | os.PathLike) -> bool:
        return os.path.isfile(cls.metrics_file(path))

    @classmethod
    def write(cls, folder: str | os.PathLike, summary: EvaluationSummary,
              details: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write metrics.json: ``details`` (every other number) and the summary; return what was written."""
        os.makedirs(folder, exist_ok=True)
        return _write_versioned(os.path.join(folder, cls.METRICS_FILE), cls.SCHEMA_VERSION,
                                {**(details or {}), "summary": summary.to_dict()})

    @classmethod
    def read_document(cls, path: str | os.PathLike) -> dict[str, Any]:
        """All of metrics.json (version checked): verification, closed_set, roc, ... and summary."""
        return _read_versioned(cls.metrics_file(path), cls.SCHEMA_VERSION, cls.PRODUCER)

    @classmethod
    def read(cls, path: str | os.PathLike) -> EvaluationSummary:
        """The summary of the evaluation in folder ``path`` (or of the metrics.json ``path``)."""
        file = cls.metrics_file(path)
        document = cls.read_document(file)
        if not isinstance(document.get("summary"), dict):
            raise ContractError(f"{file} has no summary object; re-run {cls.PRODUCER} to write it again")
        return EvaluationSummary.from_dict(document["summary"], source=f"the summary in {file}")

    @classmethod
    def read_champion(cls, path: str | os.PathLike) -> tuple[int | None, EvaluationSummary] | None:
        """(store version, summary) of the champion scored on the same pairs in the same run; None if none."""
        file = cls.metrics_file(path)
        champion = cls.read_document(file).get("champion")
        if not champion:
            return None
        return champion.get("version"), EvaluationSummary.from_dict(champion["summary"],
                                                                    source=f"the champion's summary in {file}")


# ---------------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------------
class ExportDir:
    """The export step's folder: each format's file and the model card that describes and checks them."""

    SAVED_MODEL_DIR = "saved_model"
    KERAS_FILE = "model.keras"
    TFLITE_FILE = "model.tflite"
    ONNX_FILE = "model.onnx"
    QUANTIZED_TFLITE_FILES: ClassVar[dict[str, str]] = {"float16": "model_float16.tflite",
                                                        "dynamic": "model_dynamic.tflite"}
    CARD_JSON = "model_card.json"
    CARD_MD = "model_card.md"
    SCHEMA_VERSION = 1
    PRODUCER = "the export step (`arcface export`)"

    @classmethod
    def write_card(cls, folder: str | os.PathLike, card: dict[str, Any], markdown: str) -> dict[str, Any]:
        """Write model_card.json and model_card.md; return the card as written (with its version)."""
        written = _write_versioned(os.path.join(folder, cls.CARD_JSON), cls.SCHEMA_VERSION, card)
        atomic.write_text(os.path.join(folder, cls.CARD_MD), markdown)
        return written

    @classmethod
    def has_card(cls, folder: str | os.PathLike) -> bool:
        return os.path.isfile(os.path.join(folder, cls.CARD_JSON))

    @classmethod
    def read_card(cls, path: str | os.PathLike) -> dict[str, Any]:
        """model_card.json in folder ``path`` (or the card file ``path``), version checked."""
        return _read_versioned(_in_folder(path, cls.CARD_JSON), cls.SCHEMA_VERSION, cls.PRODUCER)

    @staticmethod
    def card_evaluation(card: dict[str, Any]) -> EvaluationSummary | None:
        """The evaluation the card was exported with; None when the export was given none."""
        evaluation = card.get("evaluation")
        return EvaluationSummary.from_dict(evaluation, source="the model card's evaluation") if evaluation else None


# ---------------------------------------------------------------------------------------------------
# the model store (arcface.mlops.store)
# ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StoreVersion:
    """lineage.json of one model-store version: where it came from and why it was promoted.

    ``metrics`` is the new model's EvaluationSummary (as a dict); ``champion_metrics`` the champion's, measured
    on the same pairs in the same run (None when the store was empty); ``replaced`` the version that was
    current when this one was promoted; ``started_from`` what its training started from (arcface.warm_start's
    record: the store version, or the path and sha256; None: from scratch).
    """

    model_name: str
    version: int
    created: str
    run_id: str
    manifest_sha256: str | None
    config: dict[str, Any]
    metrics: dict[str, Any]
    champion_metrics: dict[str, Any] | None = None
    replaced: int | None = None
    reason: str = ""
    started_from: dict[str, Any] | None = None

    SCHEMA_VERSION: ClassVar[int] = 1
    PRODUCER: ClassVar[str] = "the promote step (`arcface.mlops.store.ModelStore.add_version`)"

    @classmethod
    def write(cls, path: str | os.PathLike, lineage: dict[str, Any]) -> dict[str, Any]:
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = set(lineage) - names
        if unknown:
            raise ContractError(f"lineage has unknown keys {sorted(unknown)}; known: {sorted(names)}")
        return _write_versioned(path, cls.SCHEMA_VERSION, lineage)

    @classmethod
    def read(cls, path: str | os.PathLike) -> StoreVersion:
        document = _read_versioned(os.fspath(path), cls.SCHEMA_VERSION, cls.PRODUCER)
        names = {field.name for field in dataclasses.fields(cls)}
        try:
            return cls(**{key: value for key, value in document.items() if key in names})
        except TypeError as e:
            raise ContractError(f"{path} is incomplete ({e}); the version was not written by "
                                f"{cls.PRODUCER}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
