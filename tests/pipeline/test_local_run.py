"""The whole pipeline through kfp.local's SubprocessRunner, on a few real identities of the bundled sample."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest

import pipeline
from arcface import contracts
from kfp_pipeline import local

IDENTITIES = 4
# Small enough for a 2-core CI runner: TinyFaceNet on 48x48 faces, 12 epochs of 7 steps, enough to fit the 28
# training faces (without augmentation or dropout, which the default recipe has and which this short run cannot
# afford) and to spread their people apart.
TINY = {"backbone": "TinyFaceNet", "image_size": 48, "embedding_size": 64, "epochs": 12, "batch_size": 4, "lr": 0.1,
        "enhance": 32.0, "warmup_epochs": 0.0, "augment": False, "dropout": 0.0, "n_classes": IDENTITIES,
        "export_formats": "keras,saved_model"}


@pytest.fixture(scope="module")
def few_faces(sample_dir, tmp_path_factory) -> Path:
    """The first identities of sample/orl, both splits (a copy: the sample is never written to)."""
    root = tmp_path_factory.mktemp("faces")
    for split in ("train", "validation"):
        for identity in sorted(os.listdir(sample_dir / "train"))[:IDENTITIES]:
            shutil.copytree(sample_dir / split / identity, root / split / identity)
    return root


def run(few_faces, tmp_path, progress=None, **changes):
    arguments = {**TINY, "data_root": str(few_faces), **changes}
    return local.run_local(arguments, str(tmp_path / "runs"), progress=progress)


def untrained_evaluation(run_dir: Path, scratch: Path) -> dict:
    """metrics.json of the run's network before its first step, scored as the evaluate step scored the trained
    one: the train step's config and seed (so its initial weights), the manifest it read, the same seeded pairs."""
    from arcface.artifacts import TrainedModel
    from arcface.config import load_yaml
    from arcface.evaluation.evaluate import evaluate
    from arcface.train import Trainer

    manifest = contracts.ManifestDir.read(run_dir / "align-faces" / "aligned")
    config = load_yaml(str(run_dir / "train-model" / "model" / contracts.ModelDir.CONFIG_FILE))
    config = config.replace(save_path=str(scratch / "untrained"))
    trainer = Trainer(config, manifest, verbose=0)
    model = TrainedModel(trainer.embedding_model, config, trainer.metadata(), trainer.training_model)
    return evaluate(model, manifest, output_dir=scratch / "untrained-evaluation", seed=config.seed)


def score_gap(metrics: dict) -> float:
    """Mean cosine of the genuine pairs minus that of the impostor pairs."""
    return metrics["verification"]["genuine_score_mean"] - metrics["verification"]["impostor_score_mean"]


def check_common_outputs(summary: dict, scratch: Path) -> dict:
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
    numbers = contracts.EvaluationDir.read(evaluation / "metrics")
    for key in ("verification_accuracy", "auc", "eer", "top1_accuracy", "top5_accuracy"):
        assert 0.0 <= getattr(numbers, key) <= 1.0, key
    assert numbers.top1_accuracy <= numbers.top5_accuracy
    assert numbers.genuine_pairs > 0 and numbers.impostor_pairs > 0
    assert summary["metrics"] == numbers.to_dict()
    # Better than the same network before its first step, on the same held-out pairs. Pixels alone separate most
    # of these faces (the untrained network: 0.75-0.83), so beating chance says nothing. Training spreads the
    # people apart (impostor cosines 0 or less on average, genuine above 0.9); the untrained network keeps every
    # face in one narrow cone (both averages 0.96-0.99), and so does the trained one when it is fed other pixels
    # than it trained on (evaluated on x / 255 instead of (x - 127.5) / 128: a gap below 0.03, measured).
    untrained = untrained_evaluation(run_dir, scratch)
    trained = contracts.EvaluationDir.read_document(evaluation / "metrics")
    assert (untrained["summary"]["genuine_pairs"], untrained["summary"]["impostor_pairs"]) == (
        numbers.genuine_pairs, numbers.impostor_pairs)
    assert numbers.verification_accuracy > untrained["summary"]["verification_accuracy"], (numbers, untrained)
    assert numbers.auc >= untrained["summary"]["auc"], (numbers, untrained["summary"])
    assert score_gap(trained) >= score_gap(untrained) + 0.5, (trained["verification"], untrained["verification"])
    train_metrics = json.loads((run_dir / "train-model" / "executor_output.json").read_text())
    logged = train_metrics["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert logged["epochs_completed"] == TINY["epochs"] and logged["images_per_second"] > 0
    # And it learned: over the last epochs the training faces are ranked to their identity far above chance
    # (1/4; 28 faces an epoch, so 0.5 is beyond any luck) and the loss is below the first epoch's.
    history = json.loads((model / "metadata.json").read_text())["history"]
    last = history[-3:]
    assert sum(h["accuracy"] for h in last) / len(last) >= 0.5, history
    assert min(h["loss"] for h in last) < 0.9 * history[0]["loss"], history
    return numbers


def gate_decision(summary: dict) -> bool:
    path = Path(summary["run_dir"]) / "quality-gate" / "executor_output.json"
    return json.loads(path.read_text())["parameterValues"]["Output"]


@pytest.mark.slow
def test_gate_skips_export_below_the_threshold(few_faces, tmp_path):
    summary = run(few_faces, tmp_path, accuracy_threshold=1.01)
    check_common_outputs(summary, tmp_path)
    assert gate_decision(summary) is False
    assert summary["exported"] is None
    assert not (Path(summary["run_dir"]) / "export-model").exists()


@pytest.mark.slow
def test_gate_passes_and_exports(few_faces, tmp_path):
    summary = run(few_faces, tmp_path, accuracy_threshold=0.0)
    check_common_outputs(summary, tmp_path)
    assert gate_decision(summary) is True
    exported = Path(summary["exported"])
    card = json.loads((exported / "model_card.json").read_text())
    assert set(card["formats"]) == {"keras", "saved_model"}
    assert (exported / "model.keras").is_file() and (exported / "saved_model").is_dir()
    outputs = json.loads((Path(summary["run_dir"]) / "export-model" / "executor_output.json").read_text())
    assert outputs["artifacts"]["exported"]["artifacts"][0]["metadata"]["embedding_size"] == 64
    assert card["evaluation"]["verification_accuracy"] == summary["metrics"]["verification_accuracy"]
    assert card["input"]["image_size"] == 48


@pytest.mark.parametrize("changes, message", [
    ({"penalty": -1.0}, "--penalty=-1.0 is out of range"),
    ({"data_root": "/nonexistent/faces"}, "'/nonexistent/faces' does not exist"),
])
def test_bad_parameters_fail_at_the_first_step(few_faces, tmp_path, changes, message):
    progress = io.StringIO()
    with pytest.raises(RuntimeError, match="Inner task failed: .*validate-data") as failure:
        run(few_faces, tmp_path, progress=progress, **changes)
    # The library's message reaches the person: in the error (the failing step's last lines) and in run.log.
    assert message in str(failure.value)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert message in (run_dir / "run.log").read_text()
    # Train never started; the exit step ran after the failure and said so.
    assert sorted(p.name for p in run_dir.iterdir()) == ["report-run-end", "run.log", "validate-data"]
    assert "validate-data FAILURE" in progress.getvalue()
    assert "run ended: FAILED" in progress.getvalue()


@pytest.mark.slow
def test_cli_prints_progress_and_a_summary_and_keeps_the_step_logs(few_faces, tmp_path, capsys):
    params = [arg for key, value in {**TINY, "accuracy_threshold": 0.0}.items()
              for arg in ("--param", f"{key}={value}")]
    assert pipeline.main(["run", "--local", "--data", str(few_faces), "--output", str(tmp_path / "runs"),
                          *params]) == 0
    out = capsys.readouterr().out
    (run_dir,) = (tmp_path / "runs").iterdir()
    log = (run_dir / "run.log").read_text()
    # Every step announced and finished, the trainer's epochs shown, the gate's reason shown.
    for task in ("validate-data", "train-model", "evaluate-model", "quality-gate", "export-model"):
        assert f"] {task} ..." in out and f"] {task} done (" in out, task
    assert f"epoch {TINY['epochs']}/{TINY['epochs']}:" in out and "quality gate: export:" in out
    # The executor's JSON stays in the log, off the terminal.
    assert "executor_input" not in out and "executor_input" in log.replace("executorInput", "executor_input")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"exported model:  {summary['exported']}" in out
    assert f"verification accuracy:  {summary['metrics']['verification_accuracy']:.4f}" in out
    assert "arcface compare --model" in out
