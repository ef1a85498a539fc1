"""align_faces: its Python function with fake artifacts (mtcnn and none)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from kfp import dsl

from arcface.config import TrainConfig
from arcface.contracts import AlignedDir, ManifestDir
from arcface.data import run_validation
from components.align import align_faces

SAMPLE = Path(__file__).resolve().parents[2] / "sample" / "orl"


@pytest.fixture
def validated(tmp_path):
    root = tmp_path / "faces"
    for split in ("train", "validation"):
        for identity in ("s1", "s2"):
            shutil.copytree(SAMPLE / split / identity, root / split / identity)
    run_validation(str(root / "train"), str(root / "validation"), str(tmp_path / "manifest"))
    return dsl.Dataset(name="manifest", uri=str(tmp_path / "manifest"))


def outputs(tmp_path):
    (tmp_path / "out").mkdir()
    return (dsl.Dataset(name="aligned", uri=str(tmp_path / "out" / "aligned")),
            dsl.Markdown(name="report", uri=str(tmp_path / "out" / "report.md")))


def test_mtcnn_writes_crops_that_train_reads_like_a_manifest(validated, tmp_path):
    aligned, report = outputs(tmp_path)
    config = TrainConfig(n_classes=2, image_size=64, align="mtcnn").to_dict()
    align_faces.python_func(config=config, manifest=validated, aligned=aligned, report=report)
    manifest = ManifestDir.read(aligned.path)  # what the train, evaluate and export components call
    assert manifest.alignment["method"] == "mtcnn" and len(manifest.rows) == 20
    assert all(path.startswith(AlignedDir.crops_dir(aligned.path)) for path in manifest.absolute_paths("train"))
    assert (tmp_path / "out" / "report.md").read_text().startswith("# Face alignment")
    assert aligned.metadata["align"] == "mtcnn" and aligned.metadata["train_images"] == 14


def test_none_passes_the_validated_manifest_through(validated, tmp_path):
    aligned, report = outputs(tmp_path)
    align_faces.python_func(config=TrainConfig(n_classes=2, align="none").to_dict(), manifest=validated,
                            aligned=aligned, report=report)
    assert ManifestDir.read(aligned.path) == ManifestDir.read(validated.path)
    assert ManifestDir.read(aligned.path).alignment is None
    assert (tmp_path / "out" / "report.md").read_text().startswith("# Dataset validation")
