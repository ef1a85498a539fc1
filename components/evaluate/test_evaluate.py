"""evaluate_model and quality_gate: Python functions with real artifacts, then through kfp.local."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from kfp import dsl, local

from arcface.contracts import BEST_THRESHOLD, KFOLD_MEAN, ContractError, EvaluationDir, EvaluationSummary
from components.evaluate import evaluate_model, quality_gate
from components.train.test_train import SAMPLE, tiny_model


def summary_of(accuracy: float, kind: str = KFOLD_MEAN) -> EvaluationSummary:
    return EvaluationSummary(verification_accuracy=accuracy, verification_accuracy_kind=kind, threshold=0.3,
                             auc=0.9, eer=0.1, genuine_pairs=300, impostor_pairs=300, flip_tta=True)


def evaluation_folder(folder: Path, accuracy: float, champion: float | None = None) -> Path:
    """An evaluate step's output folder, written through the contract; with the champion's numbers on the same
    pairs when ``champion`` is given (as the evaluate step writes them when the store has a champion)."""
    details = {} if champion is None else {"champion": {"version": 3, "summary": summary_of(champion).to_dict()}}
    EvaluationDir.write(folder, summary_of(accuracy), details)
    return folder


def gate(tmp_path: Path, accuracy: float, threshold: float, champion: float | None = None,
         margin: float = 0.0) -> tuple[bool, dict, str]:
    candidate = evaluation_folder(tmp_path / "candidate", accuracy, champion)
    decision = dsl.Metrics(name="decision", uri=str(tmp_path / "decision"))
    summary = dsl.Markdown(name="summary", uri=str(tmp_path / "summary.md"))
    deploy = quality_gate.python_func(evaluation=dsl.Metrics(name="metrics", uri=str(candidate)),
                                      accuracy_threshold=threshold, promotion_margin=margin, decision=decision,
                                      summary=summary)
    return deploy, dict(decision.metadata), (tmp_path / "summary.md").read_text()


# -- the quality gate (no TensorFlow: fast) ----------------------------------------------------------------
@pytest.mark.parametrize("accuracy, threshold, expected", [(0.95, 0.9, True), (0.85, 0.9, False),
                                                           (0.95, 1.01, False), (0.0, 0.0, True)])
def test_gate_without_a_champion_the_threshold_alone_decides(tmp_path, accuracy, threshold, expected):
    deploy, numbers, markdown = gate(tmp_path, accuracy, threshold, margin=0.5)
    assert deploy is expected
    assert numbers == {"promote": float(expected), "challenger_accuracy": accuracy, "promotion_margin": 0.5}
    assert "| champion | none (empty store or no store) |" in markdown


def test_gate_compares_with_the_champion_on_the_same_pairs_by_the_margin(tmp_path, capsys):
    deploy, numbers, markdown = gate(tmp_path, 0.93, 0.5, champion=0.9)
    assert deploy is True and numbers["champion_accuracy"] == 0.9 and numbers["challenger_accuracy"] == 0.93
    assert "better than the current model's k-fold accuracy 0.9000" in capsys.readouterr().out
    assert "**Promote**" in markdown and "| champion | 0.9000 (version 3) |" in markdown
    assert gate(tmp_path, 0.93, 0.5, champion=0.9, margin=0.05)[0] is False
    assert "by more than promotion_margin 0.05" in capsys.readouterr().out
    assert gate(tmp_path, 0.89, 0.5, champion=0.9)[0] is False
    assert gate(tmp_path, 0.90, 0.5, champion=0.9)[0] is False  # equal is not better
    out = capsys.readouterr().out
    assert "quality gate: skip export: k-fold accuracy 0.9000 of the new model is not better" in out


def test_gate_never_exports_a_nan_accuracy(tmp_path, capsys):
    # evaluate never writes NaN (it refuses it), but a hand-made or damaged file must not pass the gate.
    deploy, numbers, _ = gate(tmp_path, math.nan, 0.0)
    assert deploy is False and "challenger_accuracy" not in numbers
    assert "accuracy is nan; nothing is exported" in capsys.readouterr().out


def test_gate_refuses_what_it_cannot_read(tmp_path):
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "metrics.json").write_text(json.dumps({"summary": {"verification_accuracy": 0.9}}))
    with pytest.raises(ContractError, match="has no schema_version.*re-run the evaluate step"):
        quality_gate.python_func(evaluation=dsl.Metrics(name="metrics", uri=str(stale)), accuracy_threshold=0.5,
                                 promotion_margin=0.0, decision=dsl.Metrics(name="d", uri=str(tmp_path / "d")),
                                 summary=dsl.Markdown(name="s", uri=str(tmp_path / "s.md")))


def gate_output(run_root: Path) -> bool:
    (run_dir,) = [p for p in run_root.iterdir() if p.is_dir()]
    return json.loads((run_dir / "quality-gate" / "executor_output.json").read_text())["parameterValues"]["Output"]


@pytest.mark.parametrize("champion, expected", [(None, True), (0.97, False), (0.9, True)])
def test_gate_through_the_local_runner(tmp_path, champion, expected):
    candidate = evaluation_folder(tmp_path / "candidate", 0.95, champion)

    @dsl.pipeline(name="gate-only")
    def gate_only():
        evaluation = dsl.importer(artifact_uri=str(candidate), artifact_class=dsl.Metrics)
        quality_gate(evaluation=evaluation.output, accuracy_threshold=0.9, promotion_margin=0.0)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    gate_only()
    assert gate_output(tmp_path / "root") is expected


# -- evaluate (TensorFlow: slow) ---------------------------------------------------------------------------
IDENTITIES = [f"s{k}" for k in range(1, 11)]


def lfw_pairs(folder: Path) -> tuple[Path, Path]:
    """All ten sample identities laid out as LFW names them, with 20 genuine and 20 impostor pairs.

    Enough of each for the 10 folds, so the k-fold accuracy (not the best-threshold fallback) is measured.
    """
    root = folder / "lfw"
    for name in IDENTITIES:
        (root / name).mkdir(parents=True)
        for image in (SAMPLE / "train" / name).glob("*.pgm"):
            (root / name / f"{name}_{int(image.stem):04d}.jpg").symlink_to(image)
        for image in (SAMPLE / "validation" / name).glob("*.pgm"):
            (root / name / f"{name}_{int(image.stem):04d}.jpg").symlink_to(image)
    genuine = [f"{name} {i} {i + 1}" for name in IDENTITIES for i in (1, 3)]
    impostor = [f"{name} {i} {IDENTITIES[(k + i) % 10]} {i}" for k, name in enumerate(IDENTITIES) for i in (1, 2)]
    pairs = folder / "pairs.txt"
    pairs.write_text("\n".join(genuine + impostor) + "\n")
    return pairs, root


@pytest.mark.slow
def test_evaluate_function_measures_k_fold_accuracy_and_logs_what_it_wrote(tmp_path):
    manifest_dir, model_dir = tiny_model()
    pairs_file, pairs_root = lfw_pairs(tmp_path)
    metrics = dsl.Metrics(name="metrics", uri=str(tmp_path / "metrics"))
    classification = dsl.ClassificationMetrics(name="classification", uri=str(tmp_path / "classification"))
    report = dsl.HTML(name="report", uri=str(tmp_path / "report.html"))
    evaluate_model.python_func(
        model=dsl.Model(name="model", uri=model_dir), manifest=dsl.Dataset(name="manifest", uri=manifest_dir),
        pairs_file=str(pairs_file), pairs_root=str(pairs_root), seed=42, model_store="", model_name="arcface",
        metrics=metrics,
        classification=classification, report=report)

    summary = EvaluationDir.read(metrics.path)
    document = EvaluationDir.read_document(metrics.path)
    verification = document["verification"]
    # The pairs file holds 20 + 20 pairs: the ten folds are measured and the summary is their mean.
    assert (summary.genuine_pairs, summary.impostor_pairs) == (20, 20)
    assert summary.verification_accuracy_kind == KFOLD_MEAN and len(verification["fold_accuracies"]) == 10
    assert summary.verification_accuracy == pytest.approx(np.mean(verification["fold_accuracies"]))
    assert summary.verification_accuracy_std == pytest.approx(np.std(verification["fold_accuracies"]))
    for value in (summary.verification_accuracy, summary.auc, summary.eer, summary.top1_accuracy):
        assert 0.0 <= value <= 1.0
    assert summary.top1_accuracy <= summary.top5_accuracy == 1.0  # 3 classes: the true one is always in the top 5
    assert -1.0 <= summary.threshold <= 1.0 and summary.flip_tta is True
    # What the KFP UI shows is what the file holds.
    assert {k: v for k, v in metrics.metadata.items()} == summary.kfp_metrics()

    roc = classification.metadata["confidenceMetrics"]
    assert len(roc) == len(document["roc"]["fpr"]) >= 2
    fpr = [point["falsePositiveRate"] for point in roc]
    tpr = [point["recall"] for point in roc]
    assert all(0.0 <= x <= 1.0 for x in fpr + tpr)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    confusion = classification.metadata["confusionMatrix"]
    assert [a["displayName"] for a in confusion["annotationSpecs"]] == ["s1", "s2", "s3"]
    # Three validation images per identity: every row of the confusion matrix counts three.
    assert [sum(row["row"]) for row in confusion["rows"]] == [3, 3, 3]
    assert "<html" in (tmp_path / "report.html").read_text().lower()


@pytest.mark.slow
def test_evaluate_says_when_there_are_too_few_pairs_for_the_folds(tmp_path):
    manifest_dir, model_dir = tiny_model()
    metrics = dsl.Metrics(name="metrics", uri=str(tmp_path / "metrics"))
    evaluate_model.python_func(
        model=dsl.Model(name="model", uri=model_dir), manifest=dsl.Dataset(name="manifest", uri=manifest_dir),
        pairs_file="", pairs_root="", seed=42, model_store="", model_name="arcface", metrics=metrics,
        classification=dsl.ClassificationMetrics(name="classification", uri=str(tmp_path / "classification")),
        report=dsl.HTML(name="report", uri=str(tmp_path / "report.html")))
    summary = EvaluationDir.read(metrics.path)
    # 3 identities x 3 validation images: 3 x C(3, 2) = 9 genuine pairs, fewer than the 10 folds need.
    assert summary.genuine_pairs == 9 and summary.verification_accuracy_std is None
    assert summary.verification_accuracy_kind == BEST_THRESHOLD
    threshold_accuracy = EvaluationDir.read_document(metrics.path)["verification"]["threshold_accuracy"]
    assert summary.verification_accuracy == threshold_accuracy and 0.5 <= threshold_accuracy <= 1.0


@pytest.mark.slow
def test_evaluate_through_the_local_runner(tmp_path):
    manifest_dir, model_dir = tiny_model()

    @dsl.pipeline(name="evaluate-only")
    def evaluate_only():
        model = dsl.importer(artifact_uri=model_dir, artifact_class=dsl.Model)
        manifest = dsl.importer(artifact_uri=manifest_dir, artifact_class=dsl.Dataset)
        evaluate_model(model=model.output, manifest=manifest.output, pairs_file="", pairs_root="", seed=1,
                       model_store="", model_name="arcface")

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    evaluate_only()
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    summary = EvaluationDir.read(run_dir / "evaluate-model" / "metrics")
    assert 0.0 <= summary.verification_accuracy <= 1.0 and summary.genuine_pairs == 9
    assert os.path.isfile(run_dir / "evaluate-model" / "report")


@pytest.mark.slow
def test_the_champion_is_scored_on_the_same_pairs_the_same_way(tmp_path):
    """The store's champion is this very model: on the same pairs, by the same protocol, its numbers are the
    new model's to rounding. Different pairs or another preprocessing would give other numbers."""
    from arcface.export import export
    from arcface.mlops.store import ModelStore

    manifest_dir, model_dir = tiny_model()
    export(model_dir, tmp_path / "export", formats=["keras"])
    store = ModelStore(tmp_path / "store")
    store.add_version(tmp_path / "export")
    pairs_file, pairs_root = lfw_pairs(tmp_path)
    for name, pairs in (("lfw", (str(pairs_file), str(pairs_root))), ("generated", ("", ""))):
        metrics = dsl.Metrics(name="metrics", uri=str(tmp_path / name / "metrics"))
        evaluate_model.python_func(
            model=dsl.Model(name="model", uri=model_dir), manifest=dsl.Dataset(name="manifest", uri=manifest_dir),
            pairs_file=pairs[0], pairs_root=pairs[1], seed=42, model_store=str(tmp_path / "store"),
            model_name="arcface", metrics=metrics,
            classification=dsl.ClassificationMetrics(name="c", uri=str(tmp_path / name / "c")),
            report=dsl.HTML(name="report", uri=str(tmp_path / name / "report.html")))
        version, champion = EvaluationDir.read_champion(metrics.path)
        challenger = EvaluationDir.read(metrics.path)
        assert version == 1
        assert (champion.genuine_pairs, champion.impostor_pairs) == (challenger.genuine_pairs,
                                                                     challenger.impostor_pairs)
        for key in ("verification_accuracy", "auc", "eer", "threshold"):
            assert getattr(champion, key) == pytest.approx(getattr(challenger, key), abs=1e-5), (name, key)
