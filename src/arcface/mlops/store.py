"""The model store: numbered versions of one model in a folder that TF Serving and KServe load as they are.

::

    <store>/<model_name>/
        current.json              the champion: {"version": 3, ...}; replaced atomically (arcface.atomic)
        runs.jsonl                one JSON line per pipeline run: how it ended (append-only)
        .lock                     held (fcntl) while a version is committed or the pointer moves
        1/ 2/ 3/                  one version each:
            saved_model.pb        the export's SavedModel, at the top: TF Serving's and KServe's TensorFlow
            variables/ assets/    runtime take <model_name>/ as the base path and load <version>/ directly
            assets.extra/         everything else of the version: model.keras, *.tflite, model.onnx,
                                  model_card.json/.md and lineage.json. TF Serving reads only its warm-up file
                                  from assets.extra/ and ignores the rest, and keeping them inside the version
                                  folder means one rename publishes (or one rmtree removes) a whole version.

A folder store only: a PVC or any mounted volume (an object store mounted by a CSI driver works the same). No
maintained library gives atomic rename and exclusive create on object stores for free, so no URI scheme.

Writing a version: the files are staged in ``<model_name>/.staging-<host>-<pid>-<random>/`` (TF Serving ignores
names that are not integers), then renamed to the next free number. ``rename`` of a folder onto an existing
non-empty folder fails, so two writers can never take the same number even without the lock; the lock also
serializes the read-modify-write of ``current.json`` and the pruning. A crash leaves only a staging folder,
never a numbered one; stale staging folders are removed by the next writer.

Serving note: TF Serving serves the highest version by default; to serve ``current`` after a rollback, pin it
(``model_version_policy {specific {versions: N}}``) from ``current.json``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

from arcface import atomic
from arcface.contracts import ContractError, EvaluationDir, ExportDir, StoreVersion

CURRENT_FILE = "current.json"
RUN_LOG_FILE = "runs.jsonl"
LOCK_FILE = ".lock"
EXTRA_DIR = "assets.extra"
LINEAGE_FILE = "lineage.json"
STAGING_PREFIX = ".staging-"
#: A staging folder this old is a crashed writer's, whichever machine it ran on.
STALE_STAGING_SECONDS = 24 * 3600
CURRENT_SCHEMA_VERSION = 1


class StoreError(ValueError):
    """The store or a version in it cannot be used as asked; the message says why and what to do."""


class StoreConflict(StoreError):
    """The champion changed between the evaluation and the promotion (another run promoted meanwhile)."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def check_name(model_name: str) -> str:
    if not model_name or model_name.startswith(".") or "/" in model_name or model_name.isdigit():
        raise StoreError(f"model name {model_name!r} is not usable as a folder name: give a name without '/' "
                         "that does not start with '.' and is not a number (e.g. arcface)")
    return model_name


class ModelStore:
    """One model's versions under ``<root>/<model_name>/``."""

    def __init__(self, root: str | os.PathLike, model_name: str = "arcface"):
        self.root = os.path.abspath(os.fspath(root))
        self.model_name = check_name(model_name)
        self.folder = os.path.join(self.root, self.model_name)

    # -- reading ----------------------------------------------------------------------------------------
    def versions(self) -> list[int]:
        """The version numbers present, ascending."""
        if not os.path.isdir(self.folder):
            return []
        return sorted(int(n) for n in os.listdir(self.folder)
                      if n.isdigit() and os.path.isdir(os.path.join(self.folder, n)))

    def version_dir(self, version: int) -> str:
        return os.path.join(self.folder, str(int(version)))

    def extra_dir(self, version: int) -> str:
        return os.path.join(self.version_dir(version), EXTRA_DIR)

    def current(self) -> int | None:
        """The champion's version; None for an empty store (or one whose pointer names no version)."""
        path = os.path.join(self.folder, CURRENT_FILE)
        if not os.path.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                pointer = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise StoreError(f"{path} is unreadable ({e}); restore it with `python pipeline.py models "
                             f"rollback --store {self.root} --model {self.model_name} --version N`") from None
        version = pointer.get("version")
        if not isinstance(version, int) or not os.path.isdir(self.version_dir(version)):
            raise StoreError(f"{path} names version {version!r}, which is not in the store; point it at one of "
                             f"{self.versions() or 'none'} with `python pipeline.py models rollback`")
        return version

    def lineage(self, version: int) -> StoreVersion:
        if version not in self.versions():
            raise StoreError(f"version {version} is not in {self.folder}; it has {self.versions() or 'none'}")
        return StoreVersion.read(os.path.join(self.extra_dir(version), LINEAGE_FILE))

    def list(self) -> list[dict[str, Any]]:
        current = self.current()
        rows = []
        for version in self.versions():
            lineage = self.lineage(version)
            rows.append({"version": version, "current": version == current, "created": lineage.created,
                         "run_id": lineage.run_id, "verification_accuracy":
                             (lineage.metrics or {}).get("verification_accuracy"),
                         "replaced": lineage.replaced})
        return rows

    # -- writing ----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(self.folder, exist_ok=True)
        with open(os.path.join(self.folder, LOCK_FILE), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _stage(self, exported: str, lineage: dict[str, Any]) -> str:
        """A staging folder holding the version: SavedModel at the top, the rest under assets.extra/."""
        staging = os.path.join(self.folder, f"{STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-"
                                            f"{uuid.uuid4().hex[:8]}")
        saved_model = os.path.join(exported, ExportDir.SAVED_MODEL_DIR)
        try:
            if os.path.isfile(os.path.join(saved_model, "saved_model.pb")):
                shutil.copytree(saved_model, staging)
            else:  # no SavedModel exported: the version serves through its other formats only
                os.makedirs(staging)
            extra = os.path.join(staging, EXTRA_DIR)
            os.makedirs(extra, exist_ok=True)
            for name in sorted(os.listdir(exported)):
                if name == ExportDir.SAVED_MODEL_DIR or name.startswith("."):
                    continue
                source = os.path.join(exported, name)
                (shutil.copytree if os.path.isdir(source) else shutil.copy2)(source, os.path.join(extra, name))
            StoreVersion.write(os.path.join(extra, LINEAGE_FILE), lineage)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return staging

    def _remove_stale_staging(self) -> None:
        host = socket.gethostname()
        for name in os.listdir(self.folder):
            if not name.startswith(STAGING_PREFIX):
                continue
            path = os.path.join(self.folder, name)
            parts = name[len(STAGING_PREFIX):].rsplit("-", 2)
            mine_and_dead = (len(parts) == 3 and parts[0] == host and parts[1].isdigit()
                             and not atomic.process_alive(int(parts[1])))
            # Another pod's pid means nothing here: only age tells that its writer is gone.
            if mine_and_dead or time.time() - os.path.getmtime(path) > STALE_STAGING_SECONDS:
                shutil.rmtree(path, ignore_errors=True)

    def add_version(self, exported: str | os.PathLike, *, run_id: str = "", manifest_sha256: str | None = None,
                    config: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                    champion_metrics: dict[str, Any] | None = None, reason: str = "",
                    started_from: dict[str, Any] | None = None,
                    expected_current: int | None | str = "any", make_current: bool = True,
                    keep: int = 0) -> int:
        """Copy an export folder into the store as the next version; return its number.

        ``expected_current``: the champion the new model was compared with (None: the store was empty);
        when the pointer has moved since, :class:`StoreConflict` is raised and nothing is written: the
        comparison no longer holds. ``keep`` > 0 prunes to the newest ``keep`` versions (never the current).
        """
        exported = os.fspath(exported)
        if not ExportDir.has_card(exported):
            raise StoreError(f"{exported} holds no {ExportDir.CARD_JSON}; pass the export step's folder "
                             "(`arcface export`)")
        os.makedirs(self.folder, exist_ok=True)
        self._remove_stale_staging()
        lineage = {"model_name": self.model_name, "version": None, "created": _now(), "run_id": run_id,
                   "manifest_sha256": manifest_sha256, "config": config or {}, "metrics": metrics or {},
                   "champion_metrics": champion_metrics, "replaced": None, "reason": reason,
                   "started_from": started_from}
        staging = self._stage(exported, lineage)
        try:
            with self._locked():
                current = self.current()
                if expected_current != "any" and current != expected_current:
                    raise StoreConflict(
                        f"the champion was version {expected_current} when this model was evaluated, but it is "
                        f"now {current}: another run promoted meanwhile, so the comparison no longer holds; "
                        "nothing was written. Run the pipeline again to compare with the new champion")
                version = self._commit(staging, lineage, current if make_current else None)
                if make_current:
                    self._point(version, f"promoted by run {run_id or '(unnamed)'}")
                if keep > 0:
                    self._prune(keep)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename
        return version

    def _commit(self, staging: str, lineage: dict[str, Any], replaced: int | None) -> int:
        version = (self.versions() or [0])[-1] + 1
        while True:
            StoreVersion.write(os.path.join(staging, EXTRA_DIR, LINEAGE_FILE),
                               {**lineage, "version": version, "replaced": replaced})
            try:
                os.rename(staging, self.version_dir(version))  # fails when that number is taken
                return version
            except OSError:
                if not os.path.isdir(self.version_dir(version)):
                    raise
                version += 1

    def _point(self, version: int, reason: str) -> None:
        atomic.write_json(os.path.join(self.folder, CURRENT_FILE),
                          {"schema_version": CURRENT_SCHEMA_VERSION, "model_name": self.model_name,
                           "version": version, "updated": _now(), "reason": reason})

    def _prune(self, keep: int) -> list[int]:
        current = self.current()
        removed = []
        for version in self.versions()[:-keep]:
            if version != current:
                # Rename first, so no reader ever sees a half-deleted numbered folder.
                doomed = os.path.join(self.folder, f"{STAGING_PREFIX}removed-{version}-{uuid.uuid4().hex[:8]}")
                os.rename(self.version_dir(version), doomed)
                shutil.rmtree(doomed, ignore_errors=True)
                removed.append(version)
        return removed

    def rollback(self, version: int | None = None) -> int:
        """Point ``current`` at ``version`` (default: the version the current one replaced); return it."""
        with self._locked():
            current = self.current()
            if version is None:
                if current is None:
                    raise StoreError(f"{self.folder} has no current version to roll back from")
                version = self.lineage(current).replaced
                if version is None or version not in self.versions():
                    raise StoreError(f"version {current} replaced {version or 'nothing'}, which is not in the "
                                     f"store; name one of {self.versions()} with --version")
            elif version not in self.versions():
                raise StoreError(f"version {version} is not in {self.folder}; it has {self.versions() or 'none'}")
            self._point(version, f"rollback from {current}")
        return version

    # -- the run log --------------------------------------------------------------------------------------
    def log_run(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append one JSON line to runs.jsonl: a single O_APPEND write under the lock, then fsync."""
        record = {"time": _now(), **record}
        line = (json.dumps(record, default=str, sort_keys=True) + "\n").encode()
        os.makedirs(self.folder, exist_ok=True)
        with self._locked():
            fd = os.open(os.path.join(self.folder, RUN_LOG_FILE), os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if os.fstat(fd).st_size and os.pread(fd, 1, os.fstat(fd).st_size - 1) != b"\n":
                    line = b"\n" + line  # a writer died mid-line: start on a line of our own
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        return record

    def runs(self) -> list[dict[str, Any]]:
        """The run log's records; a last line cut short by a crash is skipped."""
        path = os.path.join(self.folder, RUN_LOG_FILE)
        if not os.path.isfile(path):
            return []
        records = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                with contextlib.suppress(json.JSONDecodeError):
                    records.append(json.loads(line))
        return records


def open_store(root: str, model_name: str) -> ModelStore | None:
    """The store of a pipeline parameter: None when ``root`` is blank (no store: the threshold alone decides)."""
    return ModelStore(root.strip(), model_name) if root and root.strip() else None


def promote(exported: str | os.PathLike, evaluation: str | os.PathLike, store: ModelStore, *, run_id: str = "",
            keep: int = 0, reason: str = "") -> int:
    """The promote step: the export becomes the next version and the champion; return its number.

    The lineage comes from the export's model card (config, manifest hash, what training started from) and
    the evaluation (this model's numbers and the champion's on the same pairs). The champion the evaluation
    scored must still be current.
    """
    card = ExportDir.read_card(exported)
    champion = EvaluationDir.read_champion(evaluation)
    return store.add_version(
        exported, run_id=run_id, manifest_sha256=(card.get("source") or {}).get("manifest_sha256"),
        config=card.get("config") or {}, started_from=(card.get("source") or {}).get("started_from"),
        metrics=EvaluationDir.read(evaluation).to_dict(),
        champion_metrics=champion[1].to_dict() if champion else None, reason=reason,
        expected_current=champion[0] if champion else None, keep=keep)


__all__ = ["ContractError", "ModelStore", "StoreConflict", "StoreError", "open_store", "promote"]
