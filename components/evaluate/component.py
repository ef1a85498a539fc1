"""KFP components: evaluate a trained model, then decide whether it may be exported (the quality gate)."""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.common import CPU_IMAGE, LIGHT_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate_model(model: Input[Model], manifest: Input[Dataset], pairs_file: str, pairs_root: str, seed: int,
                   metrics: Output[Metrics], classification: Output[ClassificationMetrics],
                   report: Output[HTML]) -> NamedTuple("EvaluateOutputs", [("verification_accuracy", float)]):
    """Verification (LFW 10-fold accuracy, AUC, EER, TAR@FAR) and closed-set accuracy on the validation split.

    Args:
        model: the train step's model folder.
        manifest: the validate step's folder artifact holding manifest.json.
        pairs_file: an LFW-format pairs file; empty: pairs are drawn from the validation identities.
        pairs_root: the image folder of the pairs file; empty: the pairs file's folder.
        seed: for drawing pairs.
        metrics: the headline numbers (log_metric); its folder also holds metrics.json (every number) and
            report.html, which the export step reads.
        classification: the ROC curve and the confusion matrix, drawn by the KFP UI.
        report: the HTML report (ROC, score histograms, per-identity accuracy).

    Returns:
        verification_accuracy: the LFW-protocol k-fold accuracy, for the quality gate.
    """
    import os
    import shutil
    from collections import namedtuple

    from arcface.evaluation.evaluate import evaluate

    numbers = evaluate(model.path, os.path.join(manifest.path, "manifest.json"), output_dir=metrics.path,
                       pairs_file=pairs_file or None, pairs_root=pairs_root or None, seed=seed)
    shutil.copyfile(os.path.join(metrics.path, "report.html"), report.path)
    for key, value in numbers["summary"].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            metrics.log_metric(key, float(value))
    roc = numbers["roc"]
    classification.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])
    if numbers.get("confusion_matrix"):
        classification.log_confusion_matrix(numbers["confusion_matrix"]["categories"],
                                            numbers["confusion_matrix"]["matrix"])
    verification = numbers["verification"]
    accuracy = verification["accuracy_mean"]
    if accuracy is None:  # too few pairs for the k folds: the best-threshold accuracy on all pairs, and say so
        accuracy = verification["threshold_accuracy"]
        metrics.log_metric("gate_accuracy_is_threshold_accuracy", 1.0)
    return namedtuple("EvaluateOutputs", ["verification_accuracy"])(float(accuracy))


@dsl.component(base_image=LIGHT_IMAGE, install_kfp_package=False)
def quality_gate(accuracy: float, accuracy_threshold: float, current_model_metrics: str) -> bool:
    """Export only a model that is good enough and better than the one in production.

    Args:
        accuracy: the new model's verification accuracy.
        accuracy_threshold: the least accuracy to export (1.01 never exports, 0 always does on its own).
        current_model_metrics: the production model's evaluation: its metrics.json path (or the folder
            holding it), the JSON text, or a plain number; empty when there is no production model.

    Returns:
        True (export) when accuracy >= accuracy_threshold and (no current model, or accuracy > its accuracy);
        the log says why. A single unnamed output on purpose: kfp.local (2.17) resolves a dsl.If condition on
        a task's ``Output`` but not on a named output of a NamedTuple.
    """
    import json
    import math
    import os
    def outputs(deploy, reason):
        return deploy, reason

    def accuracy_of(document):
        """The verification accuracy in a metrics.json of the evaluate step (or a flat summary)."""
        candidates = [document.get("summary", {}).get("verification_accuracy"),
                      document.get("verification_accuracy"),
                      document.get("verification", {}).get("accuracy_mean")]
        for value in candidates:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
        return None

    if not math.isfinite(accuracy):
        result = outputs(False, f"the new model's accuracy is {accuracy}; nothing is exported")
    elif accuracy < accuracy_threshold:
        result = outputs(False, f"accuracy {accuracy:.4f} is below accuracy_threshold {accuracy_threshold}")
    elif not current_model_metrics.strip():
        result = outputs(True, f"accuracy {accuracy:.4f} >= accuracy_threshold {accuracy_threshold} and no "
                               "current model to beat")
    else:
        text = current_model_metrics.strip()
        source = "current_model_metrics"
        try:
            current = float(text)
        except ValueError:
            if text.startswith("{"):
                document = json.loads(text)
            else:
                path = os.path.join(text, "metrics.json") if os.path.isdir(text) else text
                if not os.path.isfile(path):
                    raise ValueError(
                        f"current_model_metrics={text!r} is not a number, JSON, or an existing metrics.json: "
                        "pass the production model's metrics.json (its path or its text), its accuracy, "
                        "or leave it empty when there is no production model") from None
                with open(path, encoding="utf-8") as f:
                    document = json.load(f)
                source = path
            current = accuracy_of(document)
            if current is None:
                raise ValueError(f"{source} holds no verification accuracy (looked for summary."
                                 "verification_accuracy, verification_accuracy and verification.accuracy_mean); "
                                 "pass the metrics.json written by the evaluate step") from None
        if accuracy > current:
            result = outputs(True, f"accuracy {accuracy:.4f} >= accuracy_threshold {accuracy_threshold} and "
                                   f"better than the current model's {current:.4f}")
        else:
            result = outputs(False, f"accuracy {accuracy:.4f} is not better than the current model's "
                                    f"{current:.4f} ({source})")
    deploy, reason = result
    print(f"quality gate: {'export' if deploy else 'skip export'}: {reason}")
    return deploy
