"""The whole pipeline with kfp.local's DockerRunner: every step in the images docker/build.sh built.

``python pipeline.py run --docker`` (the command a user types) on the bundled real faces (sample/orl, all 10
identities: about 30 s of steps on 2 cores) with a tiny backbone and the gate at 0.0, so export runs in all four
formats. The data reaches the containers as a read-only bind mount at its host path (local.docker_runner); the
pipeline root is DockerRunner's own read-write mount. Also: a step that fails in its container fails the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from arcface import contracts
from components.common import LIGHT_IMAGE
from kfp_pipeline import dag, local

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 20 * 60
FORMATS = ("saved_model", "keras", "tflite", "onnx")
EPOCHS = 15  # 15 x 8 steps: enough to leave chance behind on 10 aligned identities
TINY = {"backbone": "TinyFaceNet", "image_size": 48, "embedding_size": 64, "epochs": EPOCHS, "batch_size": 8,
        "lr": 0.1, "enhance": 32.0, "warmup_epochs": 0.0, "accuracy_threshold": 0.0,
        "export_formats": ",".join(FORMATS)}


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def docker_run(docker_images, sample_dir, tmp_path_factory) -> dict:
    """One CLI run on the images; the folder it wrote, its output, and the sample's state before it."""
    if docker_images.validate is None:
        pytest.skip("the pipeline's validate and gate steps need the validate image (ARCFACE_DOCKER_FLAVORS)")
    output = tmp_path_factory.mktemp("docker-run") / "runs"
    before = _tree(sample_dir)
    cmd = [sys.executable, str(REPO / "pipeline.py"), "run", "--docker", "--data", str(sample_dir),
           "--output", str(output), *(arg for k, v in TINY.items() for arg in ("--param", f"{k}={v}"))]
    proc = subprocess.run(cmd, cwd=REPO, env=docker_images.env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    terminal = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{terminal[-8000:]}"
    (run_dir,) = [p for p in output.iterdir() if p.name.startswith(dag.PIPELINE_NAME)]
    # The terminal shows progress; kfp.local's and the containers' output is in the run's log.
    log = (run_dir / "run.log").read_text()
    return {"run_dir": run_dir, "log": log, "terminal": terminal, "output": output, "sample_before": before}


def test_every_step_ran_in_the_local_images(docker_run, docker_images):
    log = docker_run["log"]
    # kfp.local pulls any image it does not find by tag; nothing may be pulled (there is no registry).
    assert "Pulling image" not in log
    assert f"Found image {docker_images.cpu!r}" in log
    assert f"Found image {LIGHT_IMAGE!r}" in log
    assert "Pipeline 'arcface-training' finished with status" in _plain(log)
    assert "] export-model done (" in docker_run["terminal"] and "executor_input" not in docker_run["terminal"]
    run_dir = docker_run["run_dir"]
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "align-faces", "evaluate-model", "export-model", "promote-model", "quality-gate", "report-run-end", "run.log",
        "summary.json", "train-model", "validate-data"]
    # The outputs were written by the container user: the images' own uid 1000 when the caller is root (the
    # pipeline root is handed to it), the caller's uid otherwise (DockerRunner(user=uid:gid)).
    owner = local.IMAGE_UID if os.getuid() == 0 else os.getuid()
    for path in (run_dir, run_dir / "train-model" / "model" / "embedding_model.keras"):
        assert path.stat().st_uid == owner, path


def test_the_data_was_mounted_read_only_and_left_alone(docker_run, sample_dir):
    manifest = json.loads((docker_run["run_dir"] / "validate-data" / "manifest" / "manifest.json").read_text())
    # The manifest names the host paths: the containers saw the data at the same paths.
    assert manifest["roots"] == {"train": str(sample_dir / "train"), "validation": str(sample_dir / "validation")}
    assert len(manifest["class_names"]) == 10 and len(manifest["rows"]) == 100
    assert _tree(sample_dir) == docker_run["sample_before"]


def test_model_and_metrics(docker_run):
    run_dir = docker_run["run_dir"]
    manifest = run_dir / "validate-data" / "manifest"
    for name in ("manifest.json", "report.json", "report.md"):
        assert (manifest / name).is_file(), name
    model = run_dir / "train-model" / "model"
    for name in ("config.yaml", "metadata.json", "training_model.keras", "embedding_model.keras"):
        assert (model / name).is_file() and (model / name).stat().st_size > 0, name
    assert (model / "checkpoints").is_dir()
    metadata = json.loads((model / "metadata.json").read_text())
    assert metadata["epochs_completed"] == EPOCHS and metadata["backbone"] == "TinyFaceNet"
    assert metadata["image_size"] == 48 and metadata["embedding_size"] == 64

    evaluation = run_dir / "evaluate-model"
    assert "<html" in (evaluation / "report").read_text().lower()
    numbers = contracts.EvaluationDir.read(evaluation / "metrics")
    for key in ("verification_accuracy", "auc", "eer", "top1_accuracy", "top5_accuracy"):
        assert 0.0 <= getattr(numbers, key) <= 1.0, key
    assert numbers.genuine_pairs > 0 and numbers.impostor_pairs > 0
    # Better than chance (0.5 on balanced pairs) on the held-out faces, after training that learned: over the
    # last 3 epochs (192 faces) the training faces are ranked to their identity at 0.2 or more, where chance is
    # 0.1 (P < 1e-4 by luck; this run measured 0.245), and the loss is below the first epoch's.
    assert numbers.verification_accuracy >= 0.6, numbers
    history = metadata["history"]
    assert sum(h["accuracy"] for h in history[-3:]) / 3 >= 0.2, history
    assert min(h["loss"] for h in history[-3:]) < 0.9 * history[0]["loss"], history
    gate = json.loads((run_dir / "quality-gate" / "executor_output.json").read_text())
    assert gate["parameterValues"]["Output"] is True  # threshold 0.0


def test_export_in_every_format(docker_run, docker_images):
    run_dir = docker_run["run_dir"]
    exported = run_dir / "export-model" / "exported"
    card = json.loads((exported / "model_card.json").read_text())
    assert (exported / "model_card.md").read_text().strip()
    assert card["formats"] == list(FORMATS)
    assert card["embedding_size"] == 64
    for fmt in ("keras", "tflite", "onnx"):
        entry = card["files"][fmt]
        data = (exported / entry["path"]).read_bytes()
        assert len(data) == entry["bytes"] > 0, fmt
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], fmt
    assert (exported / "saved_model" / "saved_model.pb").is_file()
    evaluation = contracts.EvaluationDir.read(run_dir / "evaluate-model" / "metrics")
    assert contracts.ExportDir.card_evaluation(card) == evaluation
    # Written by the image's Python, not this one.
    image_python = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", docker_images.cpu, "python3", "-c",
         "import platform; print(platform.python_version())"],
        env=docker_images.env, capture_output=True, text=True, timeout=120, check=True).stdout.strip()
    assert card["framework_versions"]["python"] == image_python


def test_onnx_export_embeds_real_faces_as_the_trained_model_does(docker_run, pillow_input):
    """The ONNX file the container exported, run here by onnxruntime on the run's own aligned faces, gives the
    embeddings of the Keras model the train step saved (loaded here), each face's input made by the tests'
    Pillow reference, not by the code under test."""
    import numpy as np
    import onnxruntime as ort

    from arcface.artifacts import load_keras

    run_dir = docker_run["run_dir"]
    crops = sorted(p for p in (run_dir / "align-faces" / "aligned" / "crops").rglob("*") if p.is_file())[:12]
    assert len(crops) == 12
    faces = np.stack([pillow_input(path, 48) for path in crops])
    session = ort.InferenceSession(str(run_dir / "export-model" / "exported" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    (onnx_embeddings,) = session.run(None, {inp.name: faces})
    keras_embeddings = np.asarray(load_keras(run_dir / "train-model" / "model" / "embedding_model.keras")(faces))
    assert onnx_embeddings.shape == keras_embeddings.shape == (12, 64)

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    cosine = np.sum(unit(onnx_embeddings) * unit(keras_embeddings), axis=1)
    assert cosine.min() >= 0.9999, cosine
    # Not a constant map: the faces of different people are told apart.
    assert np.abs(unit(onnx_embeddings) @ unit(onnx_embeddings).T - np.eye(12)).max() < 0.9999


def test_a_failing_step_fails_the_run(docker_images, tmp_path, capfd):
    if docker_images.validate is None:
        pytest.skip("the validate step needs the validate image (ARCFACE_DOCKER_FLAVORS)")
    # A data root that does not exist is not mounted; validate (in its container) names it and the run stops.
    arguments = {**TINY, "data_root": "/nonexistent/faces"}
    with pytest.raises(RuntimeError, match="Inner task failed: .*validate-data"):
        local.run_local(arguments, str(tmp_path / "runs"), docker=True)
    out = capfd.readouterr().out
    assert "'/nonexistent/faces' does not exist" in out
    assert f"Found image {LIGHT_IMAGE!r}" in out
    (run_dir,) = (tmp_path / "runs").iterdir()
    # Train never started; the exit handler's step ran and recorded the end of the run.
    assert sorted(p.name for p in run_dir.iterdir()) == ["report-run-end", "validate-data"]


def _plain(text: str) -> str:
    """kfp.local's log without its ANSI colours."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)
