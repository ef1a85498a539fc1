"""promote_model: an export and its evaluation into the store (Python function, then kfp.local; no TF)."""

# No `from __future__ import annotations`: the pipeline below is read by KFP.
import json

import pytest
from kfp import dsl, local

from arcface.contracts import EvaluationDir
from arcface.mlops.store import ModelStore, StoreConflict
from components.evaluate.test_evaluate import evaluation_folder
from components.promote import promote_model
from tests.core.test_store import export_folder


def promote(tmp_path, champion=None, store="store", keep=0):
    exported = export_folder(tmp_path / f"export-{len(list(tmp_path.iterdir()))}")
    evaluation = evaluation_folder(tmp_path / f"evaluation-{len(list(tmp_path.iterdir()))}", 0.95, champion)
    return promote_model.python_func(exported=dsl.Model(name="exported", uri=str(exported)),
                                     evaluation=dsl.Metrics(name="metrics", uri=str(evaluation)),
                                     model_store=str(tmp_path / store) if store else "", model_name="arcface",
                                     keep_versions=keep, run_id="run-1")


def test_promote_writes_a_version_with_its_lineage(tmp_path):
    """Checked on the files themselves, not through the store's reader: the export's bytes under the version
    (SavedModel at its root, as TF Serving loads it), ``current.json`` naming it, and lineage.json as plain JSON
    holding what this test handed the step."""
    assert promote(tmp_path) == 1
    version = tmp_path / "store" / "arcface" / "1"
    exported = next(tmp_path.glob("export-*"))
    assert (version / "saved_model.pb").read_bytes() == (exported / "saved_model" / "saved_model.pb").read_bytes()
    assert (version / "variables" / "variables.index").read_bytes() == b"index"
    assert (version / "assets.extra" / "model.keras").read_bytes() == (exported / "model.keras").read_bytes()
    assert json.loads((version.parent / "current.json").read_text(encoding="utf-8"))["version"] == 1
    lineage = json.loads((version / "assets.extra" / "lineage.json").read_text(encoding="utf-8"))
    assert (lineage["model_name"], lineage["version"], lineage["run_id"]) == ("arcface", 1, "run-1")
    assert lineage["replaced"] is None and lineage["champion_metrics"] is None
    assert lineage["metrics"]["verification_accuracy"] == 0.95


def test_promote_refuses_when_the_champion_moved_since_the_evaluation(tmp_path):
    promote(tmp_path)
    # This evaluation scored no champion (the store was empty then), but version 1 is current now.
    with pytest.raises(StoreConflict, match="another run promoted meanwhile"):
        promote(tmp_path)
    assert ModelStore(tmp_path / "store").versions() == [1]


def test_promote_records_the_champion_it_replaced(tmp_path):
    promote(tmp_path)
    exported = export_folder(tmp_path / "second")
    evaluation = tmp_path / "evaluation-second"
    EvaluationDir.write(evaluation, EvaluationDir.read(evaluation_folder(tmp_path / "e", 0.97)),
                        {"champion": {"version": 1, "summary": EvaluationDir.read(
                            evaluation_folder(tmp_path / "c", 0.95)).to_dict()}})
    version = promote_model.python_func(exported=dsl.Model(name="e", uri=str(exported)),
                                        evaluation=dsl.Metrics(name="m", uri=str(evaluation)),
                                        model_store=str(tmp_path / "store"), model_name="arcface",
                                        keep_versions=1, run_id="run-2")
    store = ModelStore(tmp_path / "store")
    assert version == 2 and store.versions() == [2]  # keep_versions=1
    lineage = store.lineage(2)
    assert lineage.replaced == 1 and lineage.champion_metrics["verification_accuracy"] == 0.95


def test_no_store_promotes_nothing(tmp_path, capsys):
    assert promote(tmp_path, store="") == 0
    assert "no model_store given" in capsys.readouterr().out


def test_promote_through_the_local_runner(tmp_path):
    exported = export_folder(tmp_path / "export")
    evaluation = evaluation_folder(tmp_path / "evaluation", 0.95)

    @dsl.pipeline(name="promote-only")
    def promote_only():
        model = dsl.importer(artifact_uri=str(exported), artifact_class=dsl.Model)
        metrics = dsl.importer(artifact_uri=str(evaluation), artifact_class=dsl.Metrics)
        promote_model(exported=model.output, evaluation=metrics.output, model_store=str(tmp_path / "store"),
                      model_name="faces", keep_versions=3, run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    promote_only()
    (run_dir,) = (tmp_path / "root").iterdir()
    output = json.loads((run_dir / "promote-model" / "executor_output.json").read_text())
    assert output["parameterValues"]["Output"] == 1
    assert ModelStore(tmp_path / "store", "faces").lineage(1).run_id == run_dir.name
