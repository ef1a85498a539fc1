"""The whole pipeline through kfp.local's SubprocessRunner, on a few real identities of the bundled sample."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

import pipeline

IDENTITIES = 4
# Small enough for a 2-core CI runner: one epoch of TinyFaceNet on 48x48 faces.
TINY = {"backbone": "TinyFaceNet", "image_size": 48, "embedding_size": 64, "epochs": 1, "batch_size": 16,
        "warmup_epochs": 0.0, "n_classes": IDENTITIES, "export_formats": "keras,saved_model"}


@pytest.fixture(scope="module")
def few_faces(sample_dir, tmp_path_factory) -> Path:
    """The first identities of sample/orl, both splits (a copy: the sample is never written to)."""
    root = tmp_path_factory.mktemp("faces")
    for split in ("train", "validation"):
        for identity in sorted(os.listdir(sample_dir / "train"))[:IDENTITIES]:
            shutil.copytree(sample_dir / split / identity, root / split / identity)
    return root


def run(few_faces, tmp_path, **changes):
    arguments = {**TINY, "data_root": str(few_faces), **changes}
    return pipeline.run_local(arguments, str(tmp_path / "runs"))


def check_common_outputs(summary: dict) -> dict:
    run_dir = Path(summary["run_dir"])
    manifest = run_dir / "validate-data" / "manifest"
    for name in ("manifest.json", "report.json", "report.md"):
        assert (manifest / name).is_file(), name
    assert (run_dir / "validate-data" / "report").read_text().strip()
    model = run_dir / "train-model" / "model"
    for name in ("config.yaml", "metadata.json", "training_model.keras", "embedding_model.keras"):
        assert (model / name).is_file(), name
    assert (model / "checkpoints").is_dir()
    evaluation = run_dir / "evaluate-model"
    assert (evaluation / "metrics" / "metrics.json").is_file()
    assert "<html" in (evaluation / "report").read_text().lower()
    metrics = json.loads((evaluation / "metrics" / "metrics.json").read_text())
    numbers = {k: v for k, v in metrics["summary"].items() if v is not None}
    assert all(math.isfinite(v) for v in numbers.values())
    for key in ("verification_accuracy", "auc", "eer", "top1_accuracy", "top5_accuracy"):
        assert 0.0 <= numbers[key] <= 1.0, key
    assert numbers["top1_accuracy"] <= numbers["top5_accuracy"]
    assert numbers["genuine_pairs"] > 0 and numbers["impostor_pairs"] > 0
    assert summary["metrics"] == metrics["summary"]
    # The gate saw the same accuracy the evaluation wrote.
    outputs = json.loads((evaluation / "executor_output.json").read_text())
    assert outputs["parameterValues"]["verification_accuracy"] == pytest.approx(numbers["verification_accuracy"])
    train_metrics = json.loads((run_dir / "train-model" / "executor_output.json").read_text())
    logged = train_metrics["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert logged["epochs_completed"] == 1 and logged["images_per_second"] > 0
    return metrics


def gate_decision(summary: dict) -> bool:
    path = Path(summary["run_dir"]) / "quality-gate" / "executor_output.json"
    return json.loads(path.read_text())["parameterValues"]["Output"]


@pytest.mark.slow
def test_gate_skips_export_below_the_threshold(few_faces, tmp_path):
    summary = run(few_faces, tmp_path, accuracy_threshold=1.01)
    check_common_outputs(summary)
    assert gate_decision(summary) is False
    assert summary["exported"] is None
    assert not (Path(summary["run_dir"]) / "export-model").exists()


@pytest.mark.slow
def test_gate_passes_and_exports(few_faces, tmp_path):
    summary = run(few_faces, tmp_path, accuracy_threshold=0.0)
    metrics = check_common_outputs(summary)
    assert gate_decision(summary) is True
    exported = Path(summary["exported"])
    card = json.loads((exported / "model_card.json").read_text())
    assert set(card["formats"]) == {"keras", "saved_model"}
    assert (exported / "model.keras").is_file() and (exported / "saved_model").is_dir()
    outputs = json.loads((Path(summary["run_dir"]) / "export-model" / "executor_output.json").read_text())
    assert outputs["artifacts"]["exported"]["artifacts"][0]["metadata"]["embedding_size"] == 64
    assert card["evaluation"]  # the evaluation's numbers reached the model card
    assert metrics["model"]["image_size"] == 48


@pytest.mark.parametrize("changes, message", [
    ({"penalty": -1.0}, "--penalty=-1.0 is out of range"),
    ({"data_root": "/nonexistent/faces"}, "'/nonexistent/faces' does not exist"),
])
def test_bad_parameters_fail_at_the_first_step(few_faces, tmp_path, capfd, changes, message):
    with pytest.raises(RuntimeError, match="Inner task failed: .*validate-data"):
        run(few_faces, tmp_path, **changes)
    assert message in capfd.readouterr().out
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert [p.name for p in run_dir.iterdir()] == ["validate-data"]  # train never started
