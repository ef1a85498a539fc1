"""The docker test tier: a private engine, the images built once per session, torn down at the end.

``docker_images`` (session scope) is meant to be reused by every test that runs containers, e.g. a
whole-pipeline run with ``kfp.local.DockerRunner``: it returns the tags from :mod:`arcface.mlops.images` and
the ``DOCKER_HOST`` of the engine, and sets ``DOCKER_HOST`` in ``os.environ`` for the session (the
docker SDK that kfp uses reads it).

The tier only runs when asked for: ``pytest -m docker`` (any ``-m`` expression naming ``docker``
without ``not``) or ``ARCFACE_DOCKER_TESTS=1``; otherwise its tests skip, so a plain ``pytest`` on a
shared machine never starts an engine or builds 2 GB of images.

Engine: an engine already answering at ``$DOCKER_HOST`` is reused and left running; otherwise
``docker/engine.sh start`` starts a private dockerd (root, ``apt-get install -y docker.io``) and the
fixture stops it by its pid at the end of the session. Images: ``docker/build.sh --download-only``
(wheels, cached; needs PyPI the first time; skipped when ``ARCFACE_OFFLINE_WHEELS=DIR`` names a
ready wheel dir), then ``docker/build.sh --offline-wheels DIR`` (base image via debootstrap, cached;
the images, layer-cached). ``ARCFACE_DOCKER_FLAVORS`` (default ``cpu,validate``; cpu is always built) picks the images.

``local_registry`` starts a real registry (Debian's ``docker-registry``, ``apt-get install -y docker-registry``)
on 127.0.0.1 and a free port, storing in the test's tmp_path, and stops it by its pid afterwards: the engine
pushes to it over plain http, which dockerd allows for 127.0.0.0/8 without configuration.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from arcface.mlops import images

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "docker"
BUILD_TIMEOUT_S = 45 * 60


@dataclass(frozen=True)
class DockerImages:
    """What the docker tier built: tags by flavor, and the engine to talk to."""

    cpu: str
    validate: str | None
    gpu: str | None
    base: str
    docker_host: str
    wheel_dir: Path
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """os.environ with DOCKER_HOST pointing at the engine (for subprocess.run(..., env=...))."""
        return {**os.environ, "DOCKER_HOST": self.docker_host}


def _opted_in(config: pytest.Config) -> bool:
    if os.environ.get("ARCFACE_DOCKER_TESTS", "") == "1":
        return True
    markexpr = getattr(config.option, "markexpr", "") or ""
    return "docker" in markexpr and "not docker" not in markexpr


def _engine_answers(docker_host: str) -> bool:
    try:
        proc = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            env={**os.environ, "DOCKER_HOST": docker_host},
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _run(cmd: list[str], log: Path, timeout: float, env: dict[str, str]) -> str:
    """Run a build step; its stdout is returned, stderr goes to log; a failure shows the log's tail."""
    with log.open("a") as err:
        err.write(f"\n$ {' '.join(cmd)}\n")
        err.flush()
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True, timeout=timeout
        )
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-40:])
        pytest.fail(f"{' '.join(cmd)} failed (exit {proc.returncode}); last lines of {log}:\n{tail}")
    return proc.stdout


@pytest.fixture(scope="session")
def docker_images(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    if not _opted_in(request.config):
        pytest.skip("docker tier not requested: run `pytest -m docker` or set ARCFACE_DOCKER_TESTS=1")
    # Requested and unable to run is a failure, not a skip: a CI that asked for the tier must not go green without it.
    if shutil.which("docker") is None:
        pytest.fail("docker tier requested but no docker client on PATH: apt-get install -y docker.io")

    log = tmp_path_factory.mktemp("docker") / "build.log"
    env = dict(os.environ)
    timings: dict[str, float] = {}
    started_engine = False
    docker_host = os.environ.get("DOCKER_HOST", "")
    if not (docker_host and _engine_answers(docker_host)):
        if os.geteuid() != 0 or shutil.which("dockerd") is None:
            pytest.fail("docker tier requested but there is no engine at DOCKER_HOST and none can be started "
                        "here (that needs root and dockerd: apt-get install -y docker.io); point DOCKER_HOST at "
                        "a running engine")
        t0 = time.monotonic()
        out = _run([str(DOCKER_DIR / "engine.sh"), "start"], log, 120, env)
        timings["engine_start"] = time.monotonic() - t0
        docker_host = out.strip().splitlines()[-1].split("=", 1)[1]
        started_engine = True
    previous_host = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = docker_host
    env["DOCKER_HOST"] = docker_host

    def stop_engine() -> None:
        if previous_host is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = previous_host
        if started_engine:
            subprocess.run([str(DOCKER_DIR / "engine.sh"), "stop"], env=env, timeout=120, check=False)

    request.addfinalizer(stop_engine)

    offline = os.environ.get("ARCFACE_OFFLINE_WHEELS")
    if offline:
        wheel_dir = Path(offline)
    else:
        t0 = time.monotonic()
        out = _run([str(DOCKER_DIR / "build.sh"), "--download-only"], log, BUILD_TIMEOUT_S, env)
        timings["wheels"] = time.monotonic() - t0
        wheel_dir = Path(out.strip().splitlines()[-1])

    wanted = {"cpu", *os.environ.get("ARCFACE_DOCKER_FLAVORS", "cpu,validate").split(",")} - {""}
    flavors = ",".join(sorted(wanted))
    t0 = time.monotonic()
    _run(
        [str(DOCKER_DIR / "build.sh"), "--offline-wheels", str(wheel_dir), "--flavors", flavors],
        log,
        BUILD_TIMEOUT_S,
        env,
    )
    timings["images"] = time.monotonic() - t0

    return DockerImages(
        cpu=images.cpu_image(),
        validate=images.validate_image() if "validate" in wanted else None,
        gpu=images.gpu_image() if "gpu" in wanted and _image_exists(images.gpu_image(), env) else None,
        base=images.base_image(),
        docker_host=docker_host,
        wheel_dir=wheel_dir,
        timings_s=timings,
    )


def _image_exists(tag: str, env: dict[str, str]) -> bool:
    return (
        subprocess.run(
            ["docker", "image", "inspect", tag], env=env, capture_output=True, timeout=60
        ).returncode
        == 0
    )


# ---------------------------------------------------------------- a registry on 127.0.0.1

REGISTRY_BINARY = "docker-registry"  # Debian's package of the distribution registry (/usr/bin/docker-registry)
REGISTRY_START_TIMEOUT_S = 30


@dataclass(frozen=True)
class LocalRegistry:
    """A running registry: ``host`` (127.0.0.1:PORT) is what image names start with, ``url`` its HTTP API."""

    host: str
    url: str
    pid: int
    log: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/v2/", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def local_registry(request: pytest.FixtureRequest, tmp_path: Path):
    binary = shutil.which(REGISTRY_BINARY) or next(
        (p for p in ("/usr/bin/docker-registry", "/usr/sbin/docker-registry") if os.access(p, os.X_OK)), None)
    if not _opted_in(request.config):
        pytest.skip("docker tier not requested: run `pytest -m docker` or set ARCFACE_DOCKER_TESTS=1"
                    + ("" if binary else "; it also needs a registry: apt-get install -y docker-registry (as root)"))
    if binary is None:
        pytest.fail("docker tier requested but there is no registry to push to: apt-get install -y docker-registry "
                    "(as root; Debian's package of the distribution registry, /usr/bin/docker-registry)")
    log = tmp_path / "registry.log"
    for _attempt in range(3):  # the free port may be taken between probing it and the registry binding it
        port = _free_port()
        config = tmp_path / "registry.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: info\n"
            f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'registry-data'}\n"
            f"http:\n  addr: 127.0.0.1:{port}\n"
        )
        with log.open("a") as out:
            proc = subprocess.Popen([binary, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + REGISTRY_START_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline and not _answers(url):
            time.sleep(0.2)
        if proc.poll() is None and _answers(url):
            break
        _stop(proc)
    else:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        pytest.fail(f"docker tier requested but {binary} did not start on 127.0.0.1 (3 tries); its log {log}:\n{tail}")
    try:
        yield LocalRegistry(host=f"127.0.0.1:{port}", url=url, pid=proc.pid, log=log)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the registry's pid, SIGKILL after 20 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
