"""export_model: its Python function with fake artifacts, then through kfp.local (slow: TF)."""

from __future__ import annotations

import json

import pytest
from kfp import dsl, local

from components.export import export_model
from components.train.test_train import tiny_model


def evaluation_artifact(tmp_path) -> dsl.Metrics:
    folder = tmp_path / "evaluation"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"summary": {"verification_accuracy": 0.9, "auc": 0.95,
                                                                 "eer": 0.1, "threshold": 0.3}}))
    return dsl.Metrics(name="metrics", uri=str(folder))


@pytest.mark.slow
def test_function_exports_with_a_model_card(tmp_path):
    manifest_dir, model_dir = tiny_model()
    exported = dsl.Model(name="exported", uri=str(tmp_path / "exported"))
    export_model.python_func(model=dsl.Model(name="model", uri=model_dir), evaluation=evaluation_artifact(tmp_path),
                             manifest=dsl.Dataset(name="manifest", uri=manifest_dir), formats="keras, saved_model",
                             quantize="none", exported=exported)
    card = json.loads((tmp_path / "exported" / "model_card.json").read_text())
    assert set(card["formats"]) == {"keras", "saved_model"}
    assert exported.metadata["formats"] == card["formats"] and exported.metadata["input_size"] == 48


@pytest.mark.slow
def test_component_through_the_local_runner(tmp_path):
    manifest_dir, model_dir = tiny_model()
    evaluation = evaluation_artifact(tmp_path)

    @dsl.pipeline(name="export-only")
    def export_only():
        model = dsl.importer(artifact_uri=model_dir, artifact_class=dsl.Model)
        metrics = dsl.importer(artifact_uri=evaluation.uri, artifact_class=dsl.Metrics)
        manifest = dsl.importer(artifact_uri=manifest_dir, artifact_class=dsl.Dataset)
        export_model(model=model.output, evaluation=metrics.output, manifest=manifest.output, formats="keras",
                     quantize="none")

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    export_only()
    (run_dir,) = [p for p in (tmp_path / "root").iterdir() if p.is_dir()]
    assert (run_dir / "export-model" / "exported" / "model.keras").is_file()
