"""evaluate_model and quality_gate: Python functions with fake artifacts, then through kfp.local."""

from __future__ import annotations

import json
import math
import os

import pytest
from kfp import dsl, local

from components.evaluate import evaluate_model, quality_gate
from components.train.test_train import tiny_model


# -- the quality gate (pure Python: fast) -----------------------------------------------------------------
@pytest.mark.parametrize("accuracy, threshold, current, expected", [
    (0.95, 0.9, "", True),
    (0.85, 0.9, "", False),
    (0.95, 1.01, "", False),
    (0.0, 0.0, "", True),
    (0.95, 0.9, "0.97", False),
    (0.98, 0.9, "0.97", True),
    (0.97, 0.9, "0.97", False),  # equal is not better
    (0.98, 0.9, '{"summary": {"verification_accuracy": 0.99}}', False),
    (0.98, 0.9, '{"verification_accuracy": 0.5}', True),
    (math.nan, 0.0, "", False),
])
def test_gate_decision(accuracy, threshold, current, expected):
    assert quality_gate.python_func(accuracy=accuracy, accuracy_threshold=threshold,
                                    current_model_metrics=current) is expected


def test_gate_reads_a_metrics_file_or_its_folder(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text(json.dumps({"verification": {"accuracy_mean": 0.9}}))
    assert quality_gate.python_func(accuracy=0.93, accuracy_threshold=0.5,
                                    current_model_metrics=str(tmp_path / "metrics.json")) is True
    assert quality_gate.python_func(accuracy=0.89, accuracy_threshold=0.5,
                                    current_model_metrics=str(tmp_path)) is False
    assert "not better than the current model's 0.9000" in capsys.readouterr().out


def test_gate_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(ValueError, match="not a number, JSON, or an existing metrics.json"):
        quality_gate.python_func(accuracy=0.9, accuracy_threshold=0.5, current_model_metrics="/no/such.json")
    with pytest.raises(ValueError, match="holds no verification accuracy"):
        quality_gate.python_func(accuracy=0.9, accuracy_threshold=0.5, current_model_metrics='{"auc": 0.9}')


def test_gate_through_the_local_runner(tmp_path):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    assert quality_gate(accuracy=0.8, accuracy_threshold=0.9, current_model_metrics="").output is False
    assert quality_gate(accuracy=0.95, accuracy_threshold=0.9, current_model_metrics="0.9").output is True


# -- evaluate (TensorFlow: slow) ---------------------------------------------------------------------------
@pytest.mark.slow
def test_evaluate_function_logs_metrics_roc_and_confusion(tmp_path):
    manifest_dir, model_dir = tiny_model()
    metrics = dsl.Metrics(name="metrics", uri=str(tmp_path / "metrics"))
    classification = dsl.ClassificationMetrics(name="classification", uri=str(tmp_path / "classification"))
    report = dsl.HTML(name="report", uri=str(tmp_path / "report.html"))
    (accuracy,) = evaluate_model.python_func(
        model=dsl.Model(name="model", uri=model_dir), manifest=dsl.Dataset(name="manifest", uri=manifest_dir),
        pairs_file="", pairs_root="", seed=42, metrics=metrics, classification=classification, report=report)
    written = json.loads((tmp_path / "metrics" / "metrics.json").read_text())
    assert 0.0 <= accuracy <= 1.0
    if written["summary"]["verification_accuracy"] is None:  # 3 identities: too few genuine pairs for 10 folds
        assert accuracy == pytest.approx(written["verification"]["threshold_accuracy"])
        assert metrics.metadata["gate_accuracy_is_threshold_accuracy"] == 1.0
    else:
        assert metrics.metadata["verification_accuracy"] == pytest.approx(accuracy)
    assert metrics.metadata["auc"] == pytest.approx(written["summary"]["auc"])
    roc = classification.metadata["confidenceMetrics"]
    assert len(roc) == len(written["roc"]["fpr"]) and {"falsePositiveRate", "recall", "confidenceThreshold"} <= set(
        roc[0])
    confusion = classification.metadata["confusionMatrix"]
    assert [a["displayName"] for a in confusion["annotationSpecs"]] == ["s1", "s2", "s3"]
    assert "<html" in (tmp_path / "report.html").read_text().lower()


@pytest.mark.slow
def test_evaluate_through_the_local_runner(tmp_path):
    manifest_dir, model_dir = tiny_model()

    @dsl.pipeline(name="evaluate-only")
    def evaluate_only():
        model = dsl.importer(artifact_uri=model_dir, artifact_class=dsl.Model)
        manifest = dsl.importer(artifact_uri=manifest_dir, artifact_class=dsl.Dataset)
        evaluate_model(model=model.output, manifest=manifest.output, pairs_file="", pairs_root="", seed=1)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    evaluate_only()
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert os.path.isfile(run_dir / "evaluate-model" / "metrics" / "metrics.json")
