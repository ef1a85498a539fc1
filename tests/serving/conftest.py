"""A small exported model (untrained TinyFaceNet, with an evaluated threshold on its card) for the serving tests,
and `arcface serve` started as a real server on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from arcface import artifacts
from arcface.config import TrainConfig
from arcface.contracts import KFOLD_MEAN, EvaluationDir, EvaluationSummary

IMAGE_SIZE = 64
THRESHOLD = 0.5


def sample_faces(sample_dir: Path, split: str = "validation") -> list[str]:
    return sorted(str(p) for p in (sample_dir / split).rglob("*.pgm"))


def make_export(folder: Path, sample_dir: Path, seed: int = 0) -> Path:
    """Train nothing: build, save and export a tiny model whose card carries an evaluated threshold."""
    import keras

    from arcface.export import export
    from arcface.models import build_models

    keras.utils.set_random_seed(seed)
    run = folder / "run"
    run.mkdir(parents=True)
    config = TrainConfig(backbone="TinyFaceNet", image_size=IMAGE_SIZE, embedding_size=32, n_classes=4)
    training_model, embedding_model = build_models(config)
    artifacts.save_keras(training_model, run / artifacts.TRAINING_MODEL_FILE)
    artifacts.save_keras(embedding_model, run / artifacts.EMBEDDING_MODEL_FILE)
    config.save(run / artifacts.CONFIG_FILE)
    artifacts.write_json(run / artifacts.METADATA_FILE, {
        "class_names": ["a", "b", "c", "d"], "manifest_sha256": "x", "image_size": IMAGE_SIZE, "center_crop": 1.0})
    EvaluationDir.write(run, EvaluationSummary(
        verification_accuracy=0.9, verification_accuracy_kind=KFOLD_MEAN, threshold=THRESHOLD, auc=0.9, eer=0.1,
        genuine_pairs=100, impostor_pairs=100, flip_tta=True))
    out = folder / "export"
    export(run, out, formats=["saved_model", "keras"], metrics_path=str(run / "metrics.json"),
           check_images=sample_faces(sample_dir)[:2])
    return out


@pytest.fixture(scope="session")
def export_dir(sample_dir, tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("serving"), sample_dir)


REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(args: list[str], log: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """``arcface serve *args`` on a free port in a subprocess: (its loopback URL, the process) once ready;
    stopped by its pid. ``args`` name no --http_port."""
    if "--workers" not in args:  # one process: the tests read its batching counters, which each process keeps
        args = [*args, "--workers", "1"]
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "arcface.cli", "serve", *args, "--http_port", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server was not ready after {READY_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, process
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def post_concurrently(posts: list[tuple[str, dict]], timeout: float = 120) -> list[requests.Response]:
    """POST every (url, body) at once (one thread each, released together); the responses in the same order."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    start = threading.Barrier(len(posts))

    def post(url_body: tuple[str, dict]) -> requests.Response:
        start.wait()
        return requests.post(url_body[0], json=url_body[1], timeout=timeout)

    with ThreadPoolExecutor(len(posts)) as pool:
        return list(pool.map(post, posts))


def metric(url: str, name: str) -> float:
    """A counter's value from the server's Prometheus /metrics (KServe serves it; 0 before its first count)."""
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return 0.0
