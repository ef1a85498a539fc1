"""arcface.mlops.store: versions in TF Serving's layout, atomic and exclusive creation, pointer, pruning, run log."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from arcface.contracts import ContractError, ExportDir, StoreVersion
from arcface.mlops import store as S


def export_folder(path: Path, accuracy: float = 0.9) -> Path:
    """An export step's folder as arcface.export lays it out (the store copies files; it never parses them)."""
    (path / "saved_model" / "variables").mkdir(parents=True)
    (path / "saved_model" / "saved_model.pb").write_bytes(b"graph")
    (path / "saved_model" / "variables" / "variables.index").write_bytes(b"index")
    (path / "model.keras").write_bytes(b"keras")
    (path / "model.tflite").write_bytes(b"tflite")
    ExportDir.write_card(path, {"name": "m", "evaluation": {"verification_accuracy": accuracy}}, "# card\n")
    return path


@pytest.fixture
def exported(tmp_path) -> Path:
    return export_folder(tmp_path / "export")


def test_a_version_is_laid_out_for_tf_serving_with_the_rest_beside_it(tmp_path, exported):
    store = S.ModelStore(tmp_path / "store", "faces")
    assert store.versions() == [] and store.current() is None
    version = store.add_version(exported, run_id="run-a", manifest_sha256="abc", config={"epochs": 3},
                                metrics={"verification_accuracy": 0.9}, reason="first", expected_current=None)
    assert version == 1 and store.current() == 1
    folder = tmp_path / "store" / "faces" / "1"
    assert (folder / "saved_model.pb").read_bytes() == b"graph"
    assert (folder / "variables" / "variables.index").is_file()
    extra = folder / "assets.extra"
    assert sorted(p.name for p in extra.iterdir()) == ["lineage.json", "model.keras", "model.tflite",
                                                      "model_card.json", "model_card.md"]
    lineage = store.lineage(1)
    assert (lineage.version, lineage.run_id, lineage.manifest_sha256, lineage.replaced) == (1, "run-a", "abc", None)
    assert lineage.config == {"epochs": 3} and lineage.metrics == {"verification_accuracy": 0.9}
    # Only integer folders next to the pointer and the log: what TF Serving scans as versions.
    names = {p.name for p in (tmp_path / "store" / "faces").iterdir()}
    assert names == {"1", "current.json", ".lock"}
    assert json.loads((tmp_path / "store" / "faces" / "current.json").read_text())["version"] == 1


def test_promotion_records_what_it_replaced_and_rollback_returns_to_it(tmp_path, exported):
    store = S.ModelStore(tmp_path / "store")
    store.add_version(exported, expected_current=None)
    assert store.add_version(exported, expected_current=1) == 2
    assert store.lineage(2).replaced == 1 and store.current() == 2
    assert store.rollback() == 1 and store.current() == 1
    assert store.rollback(2) == 2
    with pytest.raises(S.StoreError, match="version 7 is not in .* it has \\[1, 2\\]"):
        store.rollback(7)
    rows = store.list()
    assert [(r["version"], r["current"]) for r in rows] == [(1, False), (2, True)]


def test_a_stale_comparison_writes_nothing(tmp_path, exported):
    store = S.ModelStore(tmp_path / "store")
    store.add_version(exported, expected_current=None)
    with pytest.raises(S.StoreConflict, match="champion was version None .* now 1"):
        store.add_version(exported, expected_current=None)
    assert store.versions() == [1]
    assert not [n for n in os.listdir(store.folder) if n.startswith(".staging")]


def test_keep_prunes_old_versions_but_never_the_current_one(tmp_path, exported):
    store = S.ModelStore(tmp_path / "store")
    for _ in range(3):
        store.add_version(exported)
    store.rollback(1)
    store.add_version(exported, make_current=False, keep=2)  # version 4; 2 goes, 1 stays: it is current
    assert store.versions() == [1, 3, 4] and store.current() == 1
    store.add_version(exported, keep=2)  # version 5 becomes current: 1 and 3 may go now
    assert store.versions() == [4, 5] and store.current() == 5
    assert store.add_version(exported) == 6  # numbers are never reused


def _add_many(root: str, exported: str, count: int, tag: str, start) -> None:
    start.wait()
    store = S.ModelStore(root)
    for i in range(count):
        store.add_version(exported, run_id=f"{tag}-{i}")


def test_two_processes_racing_never_share_a_version_number(tmp_path, exported):
    # spawn, not fork: a fork of a process that has loaded TensorFlow (other tests) may fail in the child.
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    writers = [context.Process(target=_add_many, args=(str(tmp_path / "store"), str(exported), 6, tag, start))
               for tag in ("a", "b")]
    for w in writers:
        w.start()
    start.set()
    for w in writers:
        w.join(60)
        assert w.exitcode == 0
    store = S.ModelStore(tmp_path / "store")
    assert store.versions() == list(range(1, 13))
    runs = sorted(store.lineage(v).run_id for v in store.versions())
    assert runs == sorted(f"{t}-{i}" for t in "ab" for i in range(6))  # each write is one whole version
    assert [store.lineage(v).version for v in store.versions()] == list(range(1, 13))


def test_the_rename_alone_refuses_a_taken_number(tmp_path, exported, monkeypatch):
    """Even when the writer's view of the store is stale (no lock, e.g. a filesystem without flock)."""
    store = S.ModelStore(tmp_path / "store")
    store.add_version(exported, run_id="first")
    monkeypatch.setattr(S.ModelStore, "versions", lambda self: [])
    staging = store._stage(str(exported), {"model_name": "arcface", "version": None, "created": "", "run_id":
                                           "second", "manifest_sha256": None, "config": {}, "metrics": {}})
    assert store._commit(staging, {"model_name": "arcface", "version": None, "created": "", "run_id": "second",
                                   "manifest_sha256": None, "config": {}, "metrics": {}}, None) == 2
    monkeypatch.undo()
    assert store.lineage(1).run_id == "first" and store.lineage(2).run_id == "second"


def test_a_crash_mid_write_leaves_no_version_and_its_staging_is_cleaned(tmp_path, exported, monkeypatch):
    store = S.ModelStore(tmp_path / "store")
    real_copy = shutil.copy2

    def failing_copy(source, target, **kwargs):
        if source.endswith("model.tflite"):
            raise OSError("disk full")
        return real_copy(source, target, **kwargs)

    monkeypatch.setattr(S.shutil, "copy2", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        store.add_version(exported)
    monkeypatch.undo()
    assert store.versions() == [] and store.current() is None
    # A writer killed outright leaves its staging folder; the next writer removes it once its pid is gone.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    orphan = Path(store.folder) / f".staging-{socket.gethostname()}-{dead}-deadbeef"
    (orphan / "assets.extra").mkdir(parents=True)
    store.add_version(exported)
    assert not orphan.exists() and store.versions() == [1]


def test_bad_names_pointer_and_exports_are_refused_with_the_fix(tmp_path, exported):
    for name in ("", "a/b", ".hidden", "3"):
        with pytest.raises(S.StoreError, match="not usable as a folder name"):
            S.ModelStore(tmp_path, name)
    store = S.ModelStore(tmp_path / "store")
    with pytest.raises(S.StoreError, match="holds no model_card.json; pass the export step's folder"):
        store.add_version(tmp_path)
    store.add_version(exported)
    (Path(store.folder) / "current.json").write_text('{"version": 9}')
    with pytest.raises(S.StoreError, match="names version 9, which is not in the store.*rollback"):
        store.current()
    (Path(store.folder) / "1" / "assets.extra" / "lineage.json").write_text('{"version": 1}')
    with pytest.raises(ContractError, match="no schema_version"):
        store.lineage(1)
    assert S.open_store("  ", "arcface") is None


def test_run_log_appends_whole_lines_and_skips_a_torn_last_one(tmp_path):
    store = S.ModelStore(tmp_path / "store")
    store.log_run({"run_id": "r1", "state": "SUCCEEDED"})
    store.log_run({"run_id": "r2", "state": "FAILED", "error": "x" * 10000})
    with open(os.path.join(store.folder, S.RUN_LOG_FILE), "a") as f:
        f.write('{"run_id": "r3", "sta')  # a writer killed mid-line
    runs = store.runs()
    assert [(r["run_id"], r["state"]) for r in runs] == [("r1", "SUCCEEDED"), ("r2", "FAILED")]
    assert all("time" in r for r in runs)
    store.log_run({"run_id": "r4", "state": "SUCCEEDED"})  # not glued onto the torn line
    assert [r["run_id"] for r in store.runs()] == ["r1", "r2", "r4"]


def test_lineage_contract_refuses_unknown_keys(tmp_path):
    with pytest.raises(ContractError, match="unknown keys \\['colour'\\]"):
        StoreVersion.write(tmp_path / "l.json", {"colour": 1})
