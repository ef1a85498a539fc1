"""KFP components: evaluate a trained model, then decide whether it may be exported (the quality gate)."""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from components.common import CPU_IMAGE, LIGHT_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate_model(model: Input[Model], manifest: Input[Dataset], pairs_file: str, pairs_root: str, seed: int,
                   model_store: str, model_name: str, metrics: Output[Metrics],
                   classification: Output[ClassificationMetrics], report: Output[HTML], run_id: str = ""):
    """Verification (LFW 10-fold accuracy, AUC, EER, TAR@FAR) and closed-set accuracy on the validation split.

    Args:
        model: the train step's model folder.
        manifest: the validate step's folder artifact (arcface.contracts.ManifestDir).
        pairs_file: an LFW-format pairs file; empty: pairs are drawn from the validation identities.
        pairs_root: the image folder of the pairs file; empty: the pairs file's folder.
        seed: for drawing pairs.
        model_store: the model store's folder (arcface.mlops.store); its current version, the champion, is scored
            on the same pairs and images. Empty: no store, no champion.
        model_name: the model's name in the store.
        run_id: the pipeline run; a failure of this step is recorded under it in the store's run log
            (arcface.mlops.notify.failures_logged), for the exit step.
        metrics: the summary's numbers (log_metric); its folder is an arcface.contracts.EvaluationDir (every
            number and the report), which the quality gate and the export step read.
        classification: the ROC curve and the confusion matrix, drawn by the KFP UI.
        report: the HTML report (ROC, score histograms, per-identity accuracy).
    """
    import shutil

    from arcface.contracts import EvaluationDir, ManifestDir
    from arcface.evaluation.evaluate import evaluate
    from arcface.mlops.notify import failures_logged
    from arcface.mlops.store import open_store

    with failures_logged("evaluate-model", model_store=model_store, model_name=model_name, run_id=run_id):
        store = open_store(model_store, model_name)
        champion = store.current() if store else None
        numbers = evaluate(model.path, ManifestDir.read(manifest.path), output_dir=metrics.path,
                           pairs_file=pairs_file or None, pairs_root=pairs_root or None, seed=seed,
                           champion=store.extra_dir(champion) if champion else None, champion_version=champion)
        shutil.copyfile(EvaluationDir.report_file(metrics.path), report.path)
        for key, value in EvaluationDir.read(metrics.path).kfp_metrics().items():
            metrics.log_metric(key, value)
        if champion:
            print(f"champion: version {champion} scored on the same pairs: "
                  f"{numbers['champion']['summary']['verification_accuracy']:.4f}")
        roc = numbers["roc"]
        classification.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])
        if numbers["confusion_matrix"]:
            classification.log_confusion_matrix(numbers["confusion_matrix"]["categories"],
                                                numbers["confusion_matrix"]["matrix"])


@dsl.component(base_image=LIGHT_IMAGE, install_kfp_package=False)
def quality_gate(evaluation: Input[Metrics], accuracy_threshold: float, promotion_margin: float,
                 decision: Output[Metrics], summary: Output[Markdown],
                 model_store: str = "", model_name: str = "arcface", run_id: str = "") -> bool:
    """Export and promote only a model that is good enough and beats the champion (arcface.mlops.gate.decide).

    Args:
        evaluation: the evaluate step's Metrics artifact (its folder holds metrics.json, with the champion's
            numbers on the same pairs when the store has one).
        accuracy_threshold: the least verification accuracy to export (1.01 never exports, 0 always does on
            its own).
        promotion_margin: how much more accurate than the champion, on the same pairs, the new model must be.
        decision: promote (0/1), both accuracies and the margin.
        summary: the decision, both scores and the reason, in Markdown.
        model_store, model_name, run_id: where a failure of this step is recorded for the exit step
            (arcface.mlops.notify.failures_logged: the store's run log); empty model_store: nowhere.

    Returns:
        True to export and promote; the log says why. A single unnamed return value on purpose: kfp.local (2.17)
        resolves a dsl.If condition on a task's ``Output`` but not on a named output of a NamedTuple.
    """
    from arcface.contracts import EvaluationDir
    from arcface.mlops.gate import decide
    from arcface.mlops.notify import failures_logged

    with failures_logged("quality-gate", model_store=model_store, model_name=model_name, run_id=run_id):
        champion = EvaluationDir.read_champion(evaluation.path)
        verdict = decide(EvaluationDir.read(evaluation.path), accuracy_threshold,
                         champion[1] if champion else None, promotion_margin)
        for key, value in verdict.metrics().items():
            decision.log_metric(key, value)
        with open(summary.path, "w", encoding="utf-8") as f:
            f.write(verdict.markdown(champion[0] if champion else None))
        print(f"quality gate: {'export' if verdict.deploy else 'skip export'}: {verdict.reason}")
        return verdict.deploy
