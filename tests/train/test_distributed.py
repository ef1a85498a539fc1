"""Training on several replicas: two logical CPU devices in one process (MirroredStrategy), and two worker
processes on this machine (MultiWorkerMirroredStrategy, TF_CONFIG as Kubeflow's training operator sets it).

Both are compared with one device training the same global batch from the same seed. The replicas split each
global batch (the first half to replica 0: the same images as one device) and batch norm is synchronized
(--sync_batchnorm, the default), so the model is the same and only the order of float32 sums differs. Measured
on this tiny run (9 steps, 3 epochs): the first epoch's mean loss agrees to 2e-6 relative; later epochs to 5e-4,
because the loss jumps where a face crosses the margin's branch, and which side a float32 rounding puts it on is
chance. That is noise, not distribution: one device with oneDNN turned off (TF_ENABLE_ONEDNN_OPTS=0, other
summation orders) differs from one device with it by as much (3e-4 on the second epoch). Tolerances: 1e-4 on the
first epoch, 1e-2 on every epoch: 20 times the noise, and far below what per-replica batch-norm statistics
(--sync_batchnorm=false) make of the same run, 15 % on the first epoch, which the test measures too, so the
comparison would catch a real difference.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from arcface.train import pick_strategy, tf_config_is_chief, train
from tests.train.conftest import tiny_config
from tests.train.test_train import wait_for_checkpoint_beyond

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIRST_EPOCH, EVERY_EPOCH = 1e-4, 1e-2  # relative, on each epoch's mean loss (see the module docstring)
SETTINGS = dict(epochs=3, batch_size=8, steps_per_epoch=3, embedding_size=16)  # 28 images: 3 steps an epoch


def env(**extra) -> dict[str, str]:
    path = os.pathsep.join(p for p in (os.path.join(REPO, "src"), REPO, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture(scope="module")
def manifest_file(tiny_manifest, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("manifest") / "manifest.json"
    tiny_manifest.write(str(path))
    return str(path)


@pytest.fixture(scope="module")
def one_device(tiny_manifest, tmp_path_factory):
    """The reference: the same runs on this process's one device."""
    return train(tiny_config(tmp_path_factory.mktemp("one") / "run", **SETTINGS), tiny_manifest, verbose=0)


def losses(history) -> list[float]:
    return [h["loss"] if isinstance(h, dict) else h for h in history]


def assert_same_losses(got, one_device_history) -> None:
    got, want = losses(got), losses(one_device_history)
    assert got[0] == pytest.approx(want[0], rel=FIRST_EPOCH)
    assert got == pytest.approx(want, rel=EVERY_EPOCH)


def test_one_device_and_the_chief_without_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert pick_strategy().num_replicas_in_sync == 1 and tf_config_is_chief()
    cluster = {"worker": ["a:1", "b:1"]}
    for task, chief in ((("worker", 0), True), (("worker", 1), False), (("chief", 0), True)):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": task[0], "index": task[1]}}))
        assert tf_config_is_chief() is chief, task
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {**cluster, "chief": ["c:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert not tf_config_is_chief(), "with a chief task, worker 0 is not the chief"


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_trains_what_one_device_trains(one_device, manifest_file, tmp_path):
    # In a subprocess: logical devices are fixed once TensorFlow has started, and would leak into other tests.
    script = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from arcface.data import Manifest
        from arcface.train import pick_strategy, train
        from tests.train.conftest import tiny_config
        strategy = pick_strategy()
        assert isinstance(strategy, tf.distribute.MirroredStrategy), strategy
        manifest = Manifest.read({manifest_file!r})
        out = {{"replicas": strategy.num_replicas_in_sync}}
        for sync in (True, False):
            result = train(tiny_config({str(tmp_path)!r} + f"/sync-{{sync}}", sync_batchnorm=sync, **{SETTINGS!r}),
                           manifest, verbose=0)
            out[str(sync)] = [h["loss"] for h in result.history]
        print("RESULT " + json.dumps(out))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env(), timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert out["replicas"] == 2
    print("one device", losses(one_device.history), "\ntwo replicas", out)
    assert_same_losses(out["True"], one_device.history)
    per_replica_bn = abs(out["False"][0] / losses(one_device.history)[0] - 1)
    assert per_replica_bn > 10 * EVERY_EPOCH, "the tolerance would not tell per-replica batch norm apart"
    metadata = json.loads((tmp_path / "sync-True" / "metadata.json").read_text())
    assert metadata["replicas"] == 2 and metadata["sync_batchnorm"] is True


# ---------------------------------------------------------------------------------------------------------
# Two workers on 127.0.0.1
# ---------------------------------------------------------------------------------------------------------
def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(manifest_file, tmp_path, attempt: str, worker_1_checkpoints=None) -> list[subprocess.Popen]:
    """Two workers as a TFJob's pods: the same command, TF_CONFIG naming the cluster and the task (worker 0 is
    the chief: the cluster has no chief task), a shared checkpoint volume, each its own save_path and /tmp."""
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    procs = []
    for index in range(2):
        checkpoints = worker_1_checkpoints if index and worker_1_checkpoints else tmp_path / "pvc"
        flags = {**{k: v for k, v in tiny_config("x").to_dict().items() if k != "save_path"}, **SETTINGS,
                 "checkpoint_dir": str(checkpoints), "checkpoint_key": "job-1"}
        tmp = tmp_path / f"{attempt}-tmp-{index}"
        tmp.mkdir()
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index},
                                "environment": "cloud"})
        cmd = [sys.executable, "-m", "arcface.cli", "train", f"--manifest={manifest_file}",
               f"--save_path={tmp_path / f'{attempt}-save-{index}'}", *(f"--{k}={v}" for k, v in flags.items())]
        log = open(tmp_path / f"{attempt}-{index}.log", "w")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                      env=env(TF_CONFIG=tf_config, TMPDIR=str(tmp))))
        log.close()
    return procs


def wait_all(procs, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [proc.wait(timeout=max(1.0, deadline - time.monotonic())) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.slow
def test_two_workers_train_what_one_device_trains_and_survive_a_killed_worker(one_device, manifest_file,
                                                                               tmp_path):
    """The first attempt loses worker 1 (SIGKILL) after the first epoch's checkpoint: the chief fails within a
    bounded time, naming the cause. The second attempt (both restarted, as the training operator restarts a
    failed job) resumes from that checkpoint and ends where one device ends, epoch by epoch. A third, whose
    worker 1 sees other checkpoints than the chief, stops at once."""
    epochs = SETTINGS["epochs"]
    procs = start_workers(manifest_file, tmp_path, "first")
    checkpoints = tmp_path / "pvc" / "job-1"
    wait_for_checkpoint_beyond(checkpoints, 0, procs[0], timeout=240)
    assert all(p.poll() is None for p in procs), "the first attempt ended before the kill; it needs more epochs"
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    (chief_rc, _) = wait_all(procs, timeout=120)
    failed_after = time.monotonic() - killed
    chief_log = (tmp_path / "first-0.log").read_text()
    assert chief_rc != 0, chief_log[-3000:]
    assert "lost contact with another training worker" in chief_log, chief_log[-3000:]
    assert "start all the workers again" in chief_log
    print(f"the chief failed {failed_after:.1f} s after worker 1 was killed")
    assert failed_after < 60

    procs = start_workers(manifest_file, tmp_path, "second")
    assert wait_all(procs, timeout=300) == [0, 0], (tmp_path / "second-0.log").read_text()[-3000:]
    for index in range(2):
        text = (tmp_path / f"second-{index}.log").read_text()
        assert "resuming from ckpt-" in text, text[-2000:]
        assert "starting from scratch" not in text

    chief = tmp_path / "second-save-0"
    metadata = json.loads((chief / "metadata.json").read_text())
    assert metadata["replicas"] == 2 and metadata["checkpoint_key"] == "job-1"
    assert metadata["epochs_completed"] == epochs and metadata["steps"] == epochs * SETTINGS["steps_per_epoch"]
    assert [h["epoch"] for h in metadata["history"]] == list(range(1, epochs + 1))
    print("one device", losses(one_device.history), "\ntwo workers", losses(metadata["history"]))
    assert_same_losses(metadata["history"], one_device.history)
    for name in ("embedding_model.keras", "training_model.keras", "config.yaml", "best/embedding_model.keras"):
        assert (chief / name).is_file(), name
    assert not (chief / "checkpoints").exists(), "checkpoints are in checkpoint_dir"
    for attempt in ("first", "second"):
        assert not (tmp_path / f"{attempt}-save-1").exists(), "worker 1 writes nothing to its save_path"
    assert not list((tmp_path / "second-tmp-1").iterdir()), "worker 1 removed its scratch folder"
    assert not list((tmp_path / "first-tmp-0").iterdir()) and not list((tmp_path / "second-tmp-0").iterdir())

    # Workers that do not read the same checkpoints would train apart (each its own steps and learning rate).
    procs = start_workers(manifest_file, tmp_path, "apart", worker_1_checkpoints=tmp_path / "pod-local")
    assert wait_all(procs, timeout=120) == [2, 2]
    for index in range(2):
        text = (tmp_path / f"apart-{index}.log").read_text()
        assert "every worker must read the same checkpoints" in text, text[-2000:]
