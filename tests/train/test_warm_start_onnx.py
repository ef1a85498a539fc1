"""--init_from an insightface .onnx file: the run imports it, its first step starts from what onnxruntime computes
on that file, and its metadata names the file by sha256. The file is made here with insightface's IResNet
topology and random weights (tests/models/test_insightface_import.py), never downloaded."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from arcface.warm_start import StartError
from tests.models.test_insightface_import import iresnet_onnx, onnxruntime_embeddings
from tests.train.conftest import tiny_config

IRESNET18 = (2, 2, 2, 2)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> str:
    return iresnet_onnx(tmp_path_factory.mktemp("insightface") / "r18.onnx", depths=IRESNET18, seed=3)


def onnx_config(folder, onnx_file: str, **changes):
    settings = {"backbone": "IResNet18", "image_size": 112, "embedding_size": 512, "init_from": onnx_file, **changes}
    return tiny_config(folder, **settings)


def test_a_run_starts_from_the_onnx_file_as_onnxruntime_runs_it(onnx_file, team_manifest, tmp_path):
    import tensorflow as tf

    from arcface.data.preprocess import face_pixels, normalize
    from arcface.train import Trainer

    before = hashlib.sha256(Path(onnx_file).read_bytes()).hexdigest()
    trainer = Trainer(onnx_config(tmp_path / "run", onnx_file), team_manifest, verbose=0)
    line = trainer.restore_or_start()
    assert line.startswith(f"starting from {onnx_file} (sha256 {before[:12]}; imported as IResNet18"), line
    faces = len(team_manifest.split("train"))
    assert f"BatchNorm statistics from {faces} training faces" in line and "0 kept, 4 new" in line
    files = team_manifest.absolute_paths("validation")[:4]
    pixels = np.stack([face_pixels(tf.constant(Path(f).read_bytes()), 112).numpy() for f in files])
    ours = np.asarray(trainer.backbone(normalize(pixels), training=False), np.float64)
    ours /= np.linalg.norm(ours, axis=1, keepdims=True)
    cosines = np.sum(ours * onnxruntime_embeddings(onnx_file, pixels), axis=1)
    assert cosines.min() >= 0.9999, cosines
    assert trainer.metadata()["started_from"] == {"init_from": onnx_file, "path": onnx_file, "sha256": before}
    assert hashlib.sha256(Path(onnx_file).read_bytes()).hexdigest() == before  # the source is only read


def test_an_onnx_of_another_backbone_or_topology_is_named(onnx_file, team_manifest, tmp_path):
    from arcface.train import Trainer

    trainer = Trainer(onnx_config(tmp_path / "r50", onnx_file, backbone="IResNet50"), team_manifest, verbose=0)
    with pytest.raises(StartError, match=r"backbone='IResNet18'.*--backbone='IResNet50'"):
        trainer.restore_or_start()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model at all")
    trainer = Trainer(onnx_config(tmp_path / "broken", str(broken)), team_manifest, verbose=0)
    with pytest.raises(StartError, match=rf"--init_from='{broken}': {broken} is not an ONNX model"):
        trainer.restore_or_start()
