"""`arcface serve` in the CPU image: the container loads an export folder mounted where KServe's storage
initializer puts a model (/mnt/models), becomes ready, and answers v1 and v2 requests with the embeddings
this checkout computes."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from arcface.embedding import load_embedder
from tests.serving.conftest import make_export, sample_faces

READY_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _docker(args: list[str], docker_images, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, env=docker_images.env,
                          timeout=timeout)


@pytest.mark.docker
@pytest.mark.slow
def test_arcface_serve_in_the_cpu_image(docker_images, sample_dir, tmp_path):
    export_dir = make_export(tmp_path / "model", sample_dir)
    mounted = tmp_path / "models"
    shutil.copytree(export_dir, mounted)
    for folder, _, files in os.walk(tmp_path):  # the image runs as uid 1000
        os.chmod(folder, 0o755)
        for f in files:
            os.chmod(os.path.join(folder, f), 0o644)
    port = _free_port()
    started = _docker(["run", "-d", "--rm", "-p", f"127.0.0.1:{port}:8080", "-v", f"{mounted}:/mnt/models:ro",
                       docker_images.cpu, "arcface", "serve", "--model", "/mnt/models", "--name", "faces",
                       "--http_port", "8080"], docker_images)
    assert started.returncode == 0, started.stderr
    container = started.stdout.strip()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                if requests.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                logs = _docker(["logs", container], docker_images)
                pytest.fail(f"not ready after {READY_TIMEOUT_S} s:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")
            time.sleep(1)
        assert requests.get(f"{url}/v2/health/live", timeout=10).json() == {"live": True}
        paths = sample_faces(sample_dir)[:3]
        encoded = [base64.b64encode(Path(p).read_bytes()).decode() for p in paths]
        reference = load_embedder(export_dir).embed(paths)
        response = requests.post(f"{url}/v1/models/faces:predict",
                                 json={"instances": [{"image": {"b64": e}} for e in encoded]}, timeout=120)
        assert response.status_code == 200, response.text
        served = np.array([p["embedding"] for p in response.json()["predictions"]], np.float32)
        np.testing.assert_allclose(served, reference, atol=1e-5)
        response = requests.post(f"{url}/v2/models/faces/infer", json={"inputs": [
            {"name": "image", "shape": [len(encoded)], "datatype": "BYTES", "data": encoded}]}, timeout=120)
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(np.array(response.json()["outputs"][0]["data"]).reshape(reference.shape),
                                   reference, atol=1e-5)
        bad = requests.post(f"{url}/v1/models/faces:predict", json={"instances": []}, timeout=30)
        assert bad.status_code == 400 and "empty list" in bad.json()["error"]
    finally:
        _docker(["rm", "-f", container], docker_images)
