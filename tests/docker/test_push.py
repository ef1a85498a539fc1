"""``docker/build.sh --push``: the images go to ARCFACE_IMAGE_REPOSITORY, their digests to a digests file, and the
compiled pipeline names them by digest. The argument check runs everywhere; the push itself is in the docker tier
(a real registry on 127.0.0.1, see ``local_registry`` in conftest.py). It pushes only the validate image (0.34 GB;
the cpu one is 1.9 GB) and reuses what the tier built: the build for the registry's repository is a fully cached
one, the same image under a second name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from arcface import __version__
from arcface.mlops import images
from tests.docker.conftest import BUILD_TIMEOUT_S, _free_port

REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "docker" / "build.sh"
MANIFEST_TYPES = ("application/vnd.docker.distribution.manifest.v2+json, "
                  "application/vnd.oci.image.manifest.v1+json, "
                  "application/vnd.docker.distribution.manifest.list.v2+json, "
                  "application/vnd.oci.image.index.v1+json")


def _env_without_repository() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop(images.REPOSITORY_ENV, None)
    return env


def test_push_needs_a_repository():
    proc = subprocess.run([str(BUILD_SH), "--push"], env=_env_without_repository(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "ARCFACE_IMAGE_REPOSITORY is not set" in proc.stderr
    assert "ARCFACE_IMAGE_REPOSITORY=127.0.0.1:5000/arcface docker/build.sh --push" in proc.stderr


# ---------------------------------------------------------------- docker tier


def _docker(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, env=env, timeout=timeout)


def _image_id(ref: str, env: dict[str, str]) -> str:
    proc = _docker(["image", "inspect", "-f", "{{.Id}}", ref], env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def _untag(refs: list[str], env: dict[str, str]) -> None:
    """Drop the names the test gave the image (the tier's own tag keeps the image itself)."""
    for ref in refs:
        _docker(["rmi", ref], env, timeout=120)


def _build_and_push(docker_images, repo: str, digests: Path) -> subprocess.CompletedProcess:
    env = {**docker_images.env, images.REPOSITORY_ENV: repo}
    return subprocess.run([str(BUILD_SH), "--offline-wheels", str(docker_images.wheel_dir), "--flavors", "validate",
                           "--push", "--digests-file", str(digests)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)


def _manifest(url: str, method: str = "HEAD"):
    request = urllib.request.Request(url, method=method, headers={"Accept": MANIFEST_TYPES})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.headers


@pytest.mark.docker
def test_push_records_the_registrys_digest_and_compile_pins_it(docker_images, local_registry, tmp_path):
    repo = f"{local_registry.host}/arcface"
    tag = f"{repo}/validate:{__version__}"
    digests = tmp_path / "image-digests.json"
    started = time.monotonic()
    proc = _build_and_push(docker_images, repo, digests)
    pushed_in = time.monotonic() - started
    try:
        assert proc.returncode == 0, f"build.sh --push failed:\n{proc.stderr[-4000:]}"
        data = json.loads(digests.read_text())
        assert (data["repository"], data["version"], set(data["images"])) == (repo, __version__, {"validate"})
        entry = data["images"]["validate"]
        digest = entry["digest"]
        reference = f"{repo}/validate@{digest}"
        assert entry["reference"] == reference and entry["tag"] == tag
        assert f"pushed {reference} in " in proc.stderr

        # The registry serves that very manifest under the tag (its digest header), and by digest.
        status, headers = _manifest(f"{local_registry.url}/v2/arcface/validate/manifests/{__version__}")
        assert status == 200 and headers["Docker-Content-Digest"] == digest
        status, headers = _manifest(f"{local_registry.url}/v2/arcface/validate/manifests/{digest}", "GET")
        assert status == 200 and headers["Docker-Content-Digest"] == digest
        # What a cluster does: pull by the digest reference.
        pulled = _docker(["pull", reference], docker_images.env)
        assert pulled.returncode == 0, pulled.stderr
        if docker_images.validate:  # reused, not rebuilt: the tier's image under the registry's name
            assert _image_id(tag, docker_images.env) == _image_id(docker_images.validate, docker_images.env)

        # The compiled pipeline names validate by that digest; cpu was not pushed, so it keeps its tag and says so.
        env = {**os.environ, images.REPOSITORY_ENV: repo}
        compiled = subprocess.run([sys.executable, "pipeline.py", "compile", "--output", str(tmp_path / "p.yaml"),
                                   "--image-digests", str(digests)], cwd=REPO, env=env, capture_output=True,
                                  text=True, timeout=300)
        assert compiled.returncode == 0, compiled.stderr
        spec = next(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
        used = {name: e["container"]["image"] for name, e in spec["deploymentSpec"]["executors"].items()}
        assert used["exec-validate-data"] == used["exec-quality-gate"] == reference
        assert used["exec-train-model"] == f"{repo}/cpu:{__version__}"
        assert f"image validate: {reference} (digest from {digests}" in compiled.stderr
        assert f"{digests} has no digest for cpu" in compiled.stderr
        print(f"\nbuild.sh --flavors validate --push: {pushed_in:.0f} s")
    finally:
        _untag([tag] + ([f"{repo}/validate@{json.loads(digests.read_text())['images']['validate']['digest']}"]
                        if digests.exists() else []), docker_images.env)


@pytest.mark.docker
def test_a_failed_push_names_the_problem_and_records_nothing(docker_images, tmp_path):
    repo = f"127.0.0.1:{_free_port()}/arcface"  # nothing listens there
    digests = tmp_path / "image-digests.json"
    proc = _build_and_push(docker_images, repo, digests)
    try:
        assert proc.returncode == 1, proc.stderr[-4000:]
        assert f"push of {repo}/validate:{__version__} failed: nothing answers at {repo.split('/')[0]}" in proc.stderr
        assert not digests.exists()
    finally:
        _untag([f"{repo}/validate:{__version__}"], docker_images.env)
