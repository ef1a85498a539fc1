"""Two workers (TF_CONFIG, as Kubeflow's training operator sets it) started with `train.py` on a folder of photos
and the default --align (issue #31): both start their collective ops before alignment starts TensorFlow, the chief
aligns, the other worker takes the chief's crops, and both train on the same manifest."""

from __future__ import annotations

import json
import os
import re
import sys

import pytest

from tests.train.test_distributed import REPO, env, free_ports, wait_all

ALIGNED = re.compile(r"aligned (\d+) image\(s\), reused (\d+) from the cache")


def start(tiny_data, cwd, attempt: str, epochs: int, ports: list[int]):
    """The issue's command (a smaller model, 4 identities), in both workers' one working folder: the default
    save_path ./params is the folder they share."""
    import subprocess

    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    procs = []
    for index in range(2):
        tmp = cwd.parent / f"{attempt}-tmp-{index}"
        tmp.mkdir()
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        cmd = [sys.executable, os.path.join(REPO, "train.py"), "--n_classes", "4",
               "--train_data", str(tiny_data / "train"), "--validation_data", str(tiny_data / "validation"),
               "--backbone", "TinyFaceNet", "--image_size", "48", "--embedding_size", "16", "--epochs", str(epochs),
               "--batch_size", "8", "--optimizer", "Adam", "--lr", "0.001", "--enhance", "32", "--seed", "1"]
        with open(cwd.parent / f"{attempt}-{index}.log", "w") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                          env=env(TF_CONFIG=tf_config, TMPDIR=str(tmp))))
    return procs


def alignment(log: str) -> tuple[int, int]:
    found = ALIGNED.findall(log)
    assert len(found) == 1, log[-3000:]
    return int(found[0][0]), int(found[0][1])


@pytest.mark.slow
def test_two_workers_align_photos_once_and_train_on_the_same_crops(tiny_data, tmp_path):
    cwd = tmp_path / "job"
    cwd.mkdir()
    procs = start(tiny_data, cwd, "first", epochs=1, ports=free_ports(2))
    codes = wait_all(procs, timeout=400)
    logs = [(tmp_path / f"first-{index}.log").read_text() for index in range(2)]
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    assert alignment(logs[0]) == (40, 0), "the chief aligns every photo"  # 4 identities: 28 + 12 photos
    assert alignment(logs[1]) == (0, 40), "worker 1 takes the chief's crops"
    assert "aligns the faces itself" not in logs[1]

    params = cwd / "params"
    metadata = json.loads((params / "metadata.json").read_text())
    assert metadata["replicas"] == 2 and metadata["epochs_completed"] == 1
    assert metadata["alignment"]["method"] == "mtcnn"
    assert (params / "embedding_model.keras").is_file() and (params / "training_model.keras").is_file()
    assert not list((tmp_path / "first-tmp-1").iterdir()), "worker 1 removed its scratch folder"

    # Both restarted with more epochs (as after a failure): they resume, and nobody aligns again.
    procs = start(tiny_data, cwd, "second", epochs=2, ports=free_ports(2))
    codes = wait_all(procs, timeout=400)
    logs = [(tmp_path / f"second-{index}.log").read_text() for index in range(2)]
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    for log in logs:
        assert alignment(log) == (0, 40)
        assert "resuming from ckpt-" in log, log[-2000:]
    again = json.loads((params / "metadata.json").read_text())
    assert again["epochs_completed"] == 2 and again["manifest_sha256"] == metadata["manifest_sha256"]


@pytest.mark.slow
def test_workers_on_different_manifests_stop_before_training(tiny_manifest, tmp_path):
    """Workers that aligned for themselves (not seeing the chief's crops) could end with other crops: the Trainer
    compares the manifests' hashes across the workers before the first step."""
    import dataclasses
    import subprocess

    fewer = dataclasses.replace(tiny_manifest, rows=tiny_manifest.rows[:-1])
    assert fewer.sha256 != tiny_manifest.sha256 and fewer.class_names == tiny_manifest.class_names
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    procs = []
    for index, manifest in enumerate((tiny_manifest, fewer)):
        manifest.write(str(tmp_path / f"manifest-{index}.json"))
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        cmd = [sys.executable, "-m", "arcface.cli", "train", f"--manifest={tmp_path / f'manifest-{index}.json'}",
               f"--save_path={tmp_path / 'params'}", "--n_classes=4", "--backbone=TinyFaceNet", "--image_size=48",
               "--embedding_size=16", "--batch_size=8", "--epochs=1", "--align=none"]
        with open(tmp_path / f"{index}.log", "w") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                          env=env(TF_CONFIG=tf_config, TMPDIR=str(tmp_path))))
    codes = wait_all(procs, timeout=240)
    logs = [(tmp_path / f"{index}.log").read_text() for index in range(2)]
    assert codes == [2, 2], "\n\n".join(log[-3000:] for log in logs)
    for log in logs:
        assert "but not every worker does: the workers must train on the same images" in log, log[-2000:]
    assert not (tmp_path / "params" / "checkpoints").exists() or not list((tmp_path / "params" / "checkpoints")
                                                                         .glob("ckpt-*")), "nothing was trained"
