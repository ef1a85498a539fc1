"""`arcface serve` in the CPU image: the container loads an export folder mounted where KServe's storage
initializer puts a model (/mnt/models), becomes ready, and answers v1 and v2 requests (sent from inside the
container, over its loopback) with the embeddings this checkout computes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from arcface.embedding import load_embedder
from tests.serving.conftest import make_export, sample_faces

READY_TIMEOUT_S = 300
# The client runs inside the server's container: the test engine (docker/engine.sh) has no bridge, so no port can
# be published, and the server then listens only in the container's own network namespace (loopback).
CLIENT = r"""
import base64, json, sys, urllib.request, urllib.error
url = "http://127.0.0.1:8080"
def post(path, body):
    request = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)
encoded = [base64.b64encode(open(p, "rb").read()).decode() for p in sys.argv[1:]]
with urllib.request.urlopen(url + "/v2/health/live", timeout=10) as answer:
    live = json.load(answer)
print(json.dumps({
    "live": live,
    "v1": post("/v1/models/faces:predict", {"instances": [{"image": {"b64": e}} for e in encoded]}),
    "v2": post("/v2/models/faces/infer", {"inputs": [{"name": "image", "shape": [len(encoded)],
                                                      "datatype": "BYTES", "data": encoded}]}),
    "empty": post("/v1/models/faces:predict", {"instances": []}),
}))
"""
READY = ("import urllib.request; "
         "urllib.request.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=2).read()")


def _docker(args: list[str], docker_images, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, env=docker_images.env,
                          timeout=timeout)


@pytest.mark.docker
@pytest.mark.slow
def test_arcface_serve_in_the_cpu_image(docker_images, sample_dir, tmp_path):
    export_dir = make_export(tmp_path / "model", sample_dir)
    mounted = tmp_path / "models"
    shutil.copytree(export_dir, mounted)
    paths = sample_faces(sample_dir)[:3]
    faces = tmp_path / "faces"
    faces.mkdir()
    for i, path in enumerate(paths):
        shutil.copyfile(path, faces / f"{i}{Path(path).suffix}")
    for folder, _, files in os.walk(tmp_path):  # the image runs as uid 1000
        os.chmod(folder, 0o755)
        for f in files:
            os.chmod(os.path.join(folder, f), 0o644)
    started = _docker(["run", "-d", "--rm", "--network", "none", "-v", f"{mounted}:/mnt/models:ro",
                       "-v", f"{faces}:/faces:ro", docker_images.cpu, "arcface", "serve", "--model", "/mnt/models",
                       "--name", "faces", "--http_port", "8080",
                       # one process, ready once it answers (tests/serving/test_listen.py serves with two)
                       "--workers", "1"], docker_images)
    assert started.returncode == 0, started.stderr
    container = started.stdout.strip()
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while _docker(["exec", container, "python3", "-c", READY], docker_images).returncode != 0:
            if time.monotonic() > deadline:
                logs = _docker(["logs", container], docker_images)
                pytest.fail(f"not ready after {READY_TIMEOUT_S} s:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")
            time.sleep(1)
        inside = [f"/faces/{i}{Path(p).suffix}" for i, p in enumerate(paths)]
        done = _docker(["exec", container, "python3", "-c", CLIENT, *inside], docker_images, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        answers = json.loads(done.stdout.strip().splitlines()[-1])
        reference = load_embedder(export_dir).embed(paths)
        assert answers["live"] == {"live": True}
        status, body = answers["v1"]
        assert status == 200, body
        served = np.array([p["embedding"] for p in body["predictions"]], np.float32)
        np.testing.assert_allclose(served, reference, atol=1e-5)
        status, body = answers["v2"]
        assert status == 200, body
        np.testing.assert_allclose(np.array(body["outputs"][0]["data"]).reshape(reference.shape), reference,
                                   atol=1e-5)
        status, body = answers["empty"]
        assert status == 400 and "empty list" in body["error"]
    finally:
        _docker(["rm", "-f", container], docker_images)
