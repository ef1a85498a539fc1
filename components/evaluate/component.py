"""KFP components: evaluate a trained model, then decide whether it may be exported (the quality gate)."""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.common import CPU_IMAGE, LIGHT_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate_model(model: Input[Model], manifest: Input[Dataset], pairs_file: str, pairs_root: str, seed: int,
                   metrics: Output[Metrics], classification: Output[ClassificationMetrics],
                   report: Output[HTML]):
    """Verification (LFW 10-fold accuracy, AUC, EER, TAR@FAR) and closed-set accuracy on the validation split.

    Args:
        model: the train step's model folder.
        manifest: the validate step's folder artifact (arcface.contracts.ManifestDir).
        pairs_file: an LFW-format pairs file; empty: pairs are drawn from the validation identities.
        pairs_root: the image folder of the pairs file; empty: the pairs file's folder.
        seed: for drawing pairs.
        metrics: the summary's numbers (log_metric); its folder is an arcface.contracts.EvaluationDir (every
            number and the report), which the quality gate and the export step read.
        classification: the ROC curve and the confusion matrix, drawn by the KFP UI.
        report: the HTML report (ROC, score histograms, per-identity accuracy).
    """
    import shutil

    from arcface.contracts import EvaluationDir, ManifestDir
    from arcface.evaluation.evaluate import evaluate

    numbers = evaluate(model.path, ManifestDir.read(manifest.path), output_dir=metrics.path,
                       pairs_file=pairs_file or None, pairs_root=pairs_root or None, seed=seed)
    shutil.copyfile(EvaluationDir.report_file(metrics.path), report.path)
    for key, value in EvaluationDir.read(metrics.path).kfp_metrics().items():
        metrics.log_metric(key, value)
    roc = numbers["roc"]
    classification.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])
    if numbers["confusion_matrix"]:
        classification.log_confusion_matrix(numbers["confusion_matrix"]["categories"],
                                            numbers["confusion_matrix"]["matrix"])


@dsl.component(base_image=LIGHT_IMAGE, install_kfp_package=False)
def quality_gate(evaluation: Input[Metrics], accuracy_threshold: float, current_model_metrics: str) -> bool:
    """Export only a model that is good enough and better than the one in production (arcface.gate.decide).

    Args:
        evaluation: the evaluate step's Metrics artifact (its folder holds metrics.json).
        accuracy_threshold: the least verification accuracy to export (1.01 never exports, 0 always does on
            its own).
        current_model_metrics: the production model's evaluation: the path of its metrics.json or of the
            folder holding it; empty when there is no production model.

    Returns:
        True to export; the log says why. A single unnamed output on purpose: kfp.local (2.17) resolves a
        dsl.If condition on a task's ``Output`` but not on a named output of a NamedTuple.
    """
    from arcface.contracts import EvaluationDir
    from arcface.gate import decide

    current = EvaluationDir.read(current_model_metrics.strip()) if current_model_metrics.strip() else None
    decision = decide(EvaluationDir.read(evaluation.path), accuracy_threshold, current)
    print(f"quality gate: {'export' if decision.deploy else 'skip export'}: {decision.reason}")
    return decision.deploy
