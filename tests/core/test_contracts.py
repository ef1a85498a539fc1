"""The step-output contracts: each folder written and read back, and the errors for a wrong or missing version."""

from __future__ import annotations

import json

import pytest

from arcface import artifacts, atomic
from arcface.contracts import (
    BEST_THRESHOLD,
    KFOLD_MEAN,
    ContractError,
    EvaluationDir,
    EvaluationSummary,
    ExportDir,
    ManifestDir,
    ModelDir,
)


def summary(**changes) -> EvaluationSummary:
    values = dict(verification_accuracy=0.9, verification_accuracy_kind=KFOLD_MEAN, threshold=0.31, auc=0.95,
                  eer=0.08, genuine_pairs=300, impostor_pairs=300, flip_tta=True, verification_accuracy_std=0.02,
                  tar_at_far={"1e-01": 0.8, "1e-03": None}, top1_accuracy=0.7, top5_accuracy=0.9,
                  images_per_second=120.0)
    return EvaluationSummary(**{**values, **changes})


# -- evaluate ----------------------------------------------------------------------------------------------
def test_evaluation_round_trip_through_the_folder_or_the_file(tmp_path):
    written = EvaluationDir.write(tmp_path, summary(), {"verification": {"auc": 0.95}})
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == written
    assert list(on_disk)[0] == "schema_version" and on_disk["schema_version"] == 1
    assert on_disk["verification"] == {"auc": 0.95}
    # The summary is flat, TAR@FAR under one key per FAR, as KFP metrics and pipeline.py read it.
    assert on_disk["summary"] == {
        "verification_accuracy": 0.9, "verification_accuracy_kind": "kfold_mean", "threshold": 0.31,
        "auc": 0.95, "eer": 0.08, "genuine_pairs": 300, "impostor_pairs": 300, "flip_tta": True,
        "verification_accuracy_std": 0.02, "tar_at_far_1e-01": 0.8, "tar_at_far_1e-03": None,
        "top1_accuracy": 0.7, "top5_accuracy": 0.9, "images_per_second": 120.0}
    assert EvaluationDir.read(tmp_path) == summary()
    assert EvaluationDir.read(tmp_path / "metrics.json") == summary()
    assert EvaluationDir.read_document(tmp_path)["verification"] == {"auc": 0.95}
    assert EvaluationDir.exists(tmp_path) and not EvaluationDir.exists(tmp_path / "elsewhere")


def test_kfp_metrics_are_the_measured_numbers_only():
    metrics = summary(verification_accuracy_kind=BEST_THRESHOLD, verification_accuracy_std=None).kfp_metrics()
    # No flag (flip_tta), no word (the kind), no unmeasured figure (std, TAR at 1e-3).
    assert metrics == {"verification_accuracy": 0.9, "threshold": 0.31, "auc": 0.95, "eer": 0.08,
                       "genuine_pairs": 300.0, "impostor_pairs": 300.0, "tar_at_far_1e-01": 0.8,
                       "top1_accuracy": 0.7, "top5_accuracy": 0.9, "images_per_second": 120.0}


@pytest.mark.parametrize("version, found", [(None, "has no schema_version"), (2, "has schema_version 2"),
                                            ("1", "has schema_version '1'")])
def test_a_metrics_file_of_another_version_is_refused(tmp_path, version, found):
    document = {"summary": summary().to_dict()}
    if version is not None:
        document["schema_version"] = version
    (tmp_path / "metrics.json").write_text(json.dumps(document))
    with pytest.raises(ContractError) as error:
        EvaluationDir.read(tmp_path)
    message = str(error.value)
    assert str(tmp_path / "metrics.json") in message and found in message
    assert "reads schema_version 1" in message and "re-run the evaluate step" in message


def test_missing_or_incomplete_evaluations_name_the_fix(tmp_path):
    with pytest.raises(ContractError, match=r"metrics.json does not exist; pass the output folder of the evaluate"):
        EvaluationDir.read(tmp_path)
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(ContractError, match="is not valid JSON .* re-run the evaluate step"):
        EvaluationDir.read(tmp_path)
    flat = summary().to_dict()
    del flat["threshold"], flat["auc"]
    (tmp_path / "metrics.json").write_text(json.dumps({"schema_version": 1, "summary": flat}))
    with pytest.raises(ContractError, match="lacks threshold, auc; re-run the evaluate step"):
        EvaluationDir.read(tmp_path)
    with pytest.raises(ContractError, match="verification_accuracy_kind='mean' is unknown"):
        summary(verification_accuracy_kind="mean")


# -- validate ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def validated(sample_dir):
    from arcface.data import validate_dataset

    return validate_dataset(str(sample_dir / "train"), str(sample_dir / "validation"))


def test_manifest_folder_round_trip(validated, tmp_path):
    paths = ManifestDir.write(tmp_path, validated)
    assert sorted(paths) == ["manifest.json", "report.json", "report.md"]
    assert ManifestDir.read(tmp_path) == validated.manifest == ManifestDir.read(tmp_path / "manifest.json")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["schema_version"] == 1 and report["counts"] == validated.report["counts"]
    assert ManifestDir.read_report(tmp_path)["manifest_sha256"] == validated.manifest.sha256
    assert (tmp_path / "report.md").read_text().startswith("# Dataset validation")


@pytest.mark.parametrize("version, found", [(None, "has no version"), (2, "has version 2")])
def test_a_manifest_of_another_version_is_refused(validated, tmp_path, version, found):
    document = validated.manifest.to_dict()
    document.pop("version")
    if version is not None:
        document["version"] = version
    (tmp_path / "manifest.json").write_text(json.dumps(document))
    with pytest.raises(ContractError, match=f"manifest.json {found}, but this package reads version 1; .* "
                                            "re-run the validate step"):
        ManifestDir.read(tmp_path)


# -- export ------------------------------------------------------------------------------------------------
def test_model_card_round_trip_and_its_evaluation(tmp_path):
    card = {"name": "arcface-x", "embedding_size": 32, "evaluation": {**summary().to_dict(), "source": "/m"}}
    written = ExportDir.write_card(tmp_path, card, "# card\n")
    assert written == {"schema_version": 1, **card}
    assert json.loads((tmp_path / "model_card.json").read_text()) == written
    assert (tmp_path / "model_card.md").read_text() == "# card\n"
    read = ExportDir.read_card(tmp_path)
    assert read == ExportDir.read_card(tmp_path / "model_card.json") == written
    assert ExportDir.card_evaluation(read) == summary()
    assert ExportDir.card_evaluation({"evaluation": {}}) is None  # exported without an evaluation
    del written["schema_version"]
    (tmp_path / "model_card.json").write_text(json.dumps(written))
    with pytest.raises(ContractError, match="has no schema_version.*re-run the export step"):
        ExportDir.read_card(tmp_path)


# -- train -------------------------------------------------------------------------------------------------
def test_model_folder_names_are_one_definition(tmp_path):
    assert (artifacts.CONFIG_FILE, artifacts.METADATA_FILE, artifacts.EMBEDDING_MODEL_FILE) == (
        "config.yaml", "metadata.json", "embedding_model.keras")
    assert artifacts.TRAINING_MODEL_FILE is ModelDir.TRAINING_MODEL_FILE and artifacts.BEST_DIR is ModelDir.BEST_DIR
    assert ModelDir.read_metadata(tmp_path) == {}
    atomic.write_json(tmp_path / ModelDir.METADATA_FILE, {"class_names": ["a"]})
    assert ModelDir.read_metadata(tmp_path) == {"class_names": ["a"]}
