"""validate_data: its Python function with fake artifacts, then the component through kfp.local."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from kfp import dsl, local

from arcface.config import ConfigError, TrainConfig
from arcface.contracts import ManifestDir
from arcface.data import DataError
from components.validate import validate_data

SAMPLE = Path(__file__).resolve().parents[2] / "sample" / "orl"  # tests/conftest.py's sample_dir


@pytest.fixture
def faces(tmp_path):
    sample_dir = SAMPLE
    root = tmp_path / "faces"
    for split in ("train", "validation"):
        for identity in ("s1", "s2", "s3"):
            shutil.copytree(sample_dir / split / identity, root / split / identity)
    return root


def kfp_strings(config: TrainConfig) -> dict:
    """How KFP hands over a dict built from pipeline parameters: every member a string, ints as '3.0'."""
    return {k: (str(float(v)) if isinstance(v, int) and not isinstance(v, bool) else str(v).lower()
                if isinstance(v, bool) else str(v)) for k, v in config.to_dict().items()}


def artifacts(tmp_path):
    return (dsl.Dataset(name="manifest", uri=str(tmp_path / "out" / "manifest")),
            dsl.Markdown(name="report", uri=str(tmp_path / "out" / "report.md")))


def test_function_writes_manifest_and_returns_the_resolved_config(faces, tmp_path):
    manifest, report = artifacts(tmp_path)
    (tmp_path / "out").mkdir()
    config = kfp_strings(TrainConfig(n_classes=3, epochs=7))
    (resolved,) = validate_data.python_func(config=config, data_root=str(faces), manifest=manifest, report=report)
    assert resolved["epochs"] == 7 and resolved["n_classes"] == 3 and resolved["augment"] is True
    assert resolved["train_data"] == str(faces / "train")
    assert ManifestDir.read(manifest.path).class_names == ["s1", "s2", "s3"]
    assert ManifestDir.read_report(manifest.path)["counts"]["validation"]["images"] == 9
    shown = (tmp_path / "out" / "report.md").read_text()
    assert shown.startswith("#") and shown == Path(ManifestDir.report_markdown_file(manifest.path)).read_text()
    assert manifest.metadata["n_classes"] == 3 and manifest.metadata["train_images"] == 21


def test_n_classes_0_takes_the_count_from_the_data(faces, tmp_path, capsys):
    """What `pipeline.py run --local --data YOUR_FACES` relies on (its own 'next:' hint): 3 people here, where the
    flag's default is 10. An explicit count is still checked."""

    from kfp_pipeline.local import local_arguments

    manifest, report = artifacts(tmp_path)
    (tmp_path / "out").mkdir()
    config = {**kfp_strings(TrainConfig()), "n_classes": "0.0"}
    (resolved,) = validate_data.python_func(config=config, data_root=str(faces), manifest=manifest, report=report)
    assert resolved["n_classes"] == 3 and manifest.metadata["n_classes"] == 3
    assert "n_classes: 3, the usable identities in" in capsys.readouterr().out
    with pytest.raises(DataError, match="--n_classes=10 but the training data has 3"):
        validate_data.python_func(config=kfp_strings(TrainConfig()), data_root=str(faces), manifest=manifest,
                                  report=report)
    assert local_arguments(data=str(faces))["n_classes"] == 0
    assert local_arguments(data=str(faces), params=["n_classes=3"])["n_classes"] == 3


def test_bad_config_fails_with_the_library_message(faces, tmp_path):
    manifest, report = artifacts(tmp_path)
    with pytest.raises(ConfigError, match="--penalty=-1.0 is out of range"):
        validate_data.python_func(config=kfp_strings(TrainConfig(n_classes=3, penalty=-1)),
                                  data_root=str(faces), manifest=manifest, report=report)


def test_missing_data_fails_with_the_library_message(tmp_path):
    manifest, report = artifacts(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        validate_data.python_func(config=TrainConfig().to_dict(), data_root=str(tmp_path / "nowhere"),
                                  manifest=manifest, report=report)


def test_component_through_the_local_runner(faces, tmp_path):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    task = validate_data(config=TrainConfig(n_classes=3).to_dict(), data_root=str(faces))
    assert task.outputs["config"]["n_classes"] == 3
    manifest = task.outputs["manifest"]
    assert ManifestDir.read(manifest.path).class_names == ["s1", "s2", "s3"]
