""".ci/run, run for real against stand-ins: `git`, `python3 -m venv` and the tools inside each venv are small
scripts that log what they were asked, where, and in which environment, so the test sees what CI *does* (a
commented-out line or a step in the wrong venv fails it), in a second. The strict-skip rule of tests/conftest.py
is checked on a throwaway test file run by a real pytest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests import readme
from tests.conftest import REPO, STRICT_SKIPS_ENV

VENV_TOOL = """#!/usr/bin/env bash
line="$(basename "$0") $*"
echo "$line|venv=${VIRTUAL_ENV:-}|cwd=$PWD|strict=${ARCFACE_STRICT_SKIPS:-}|flavors=${ARCFACE_DOCKER_FLAVORS:-}|docker=${ARCFACE_DOCKER_TESTS:-}" >> "$CI_LOG"
[ "$line" != "${CI_FAIL:-}" ]
"""
PYTHON3 = """#!/usr/bin/env bash
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin"
  printf 'export VIRTUAL_ENV=%s\\nexport PATH=%s/bin:$PATH\\n' "$3" "$3" > "$3/bin/activate"
  for tool in pip python ruff; do cp "$(dirname "$0")/venv-tool" "$3/bin/$tool"; done
  echo "venv $3" >> "$CI_LOG"
  exit 0
fi
exec {python} "$@"
"""
GIT = """#!/usr/bin/env bash
echo "git $*" >> "$CI_LOG"
[ "$1" = clone ] && mkdir -p "${@: -1}"
exit 0
"""


def run_ci(tmp_path: Path, *, shared: bool = True, fail: str = "") -> tuple[subprocess.CompletedProcess, list]:
    """.ci/run in a copy of what it reads, with stand-ins first on PATH; (the process, the logged calls)."""
    repo, stubs, faces = tmp_path / "repo", tmp_path / "stubs", tmp_path / "faces"
    for name in (".ci/run", "README.md", "tests/__init__.py", "tests/readme.py"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, repo / name)
    stubs.mkdir()
    for name, text in {"venv-tool": VENV_TOOL, "python3": PYTHON3.format(python=sys.executable), "git": GIT,
                       "dockerd": "#!/bin/sh\n", "debootstrap": "#!/bin/sh\n", "docker-registry": "#!/bin/sh\n"}.items():
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    if shared:
        (faces / "orl_faces").mkdir(parents=True)
        (faces / "lfw_deepfunneled").mkdir()
        (faces / "lfw_deepfunneled" / "pairsDevTrain.txt").write_text("1100\n")
    log = tmp_path / "calls.log"
    log.touch()
    environment = {k: v for k, v in os.environ.items() if k not in (STRICT_SKIPS_ENV, "VIRTUAL_ENV")}
    environment.update(PATH=f"{stubs}{os.pathsep}{environment['PATH']}", CI_LOG=str(log), CI_FAIL=fail,
                       ARCFACE_SHARED_FACES=str(faces), ARCFACE_DOCKER_FLAVORS="cpu")  # inherited, lacking validate
    process = subprocess.run(["bash", str(repo / ".ci" / "run")], env=environment, capture_output=True,
                             text=True, timeout=120, stdin=subprocess.DEVNULL)
    calls = [dict(zip(("command", *(f.split("=", 1)[0] for f in line.split("|")[1:])),
                      (line.split("|")[0], *(f.split("=", 1)[1] for f in line.split("|")[1:])), strict=True))
             for line in log.read_text().splitlines()]
    return process, calls


def test_ci_runs_the_readmes_two_commands_each_in_a_new_venv_then_ruff(tmp_path):
    process, calls = run_ci(tmp_path)
    assert process.returncode == 0, process.stderr
    commands = [c["command"] for c in calls]
    clone = next(c for c in commands if c.startswith("git clone")).split()[-1]
    newcomer = str(Path(clone).parent)
    main_job, tests = readme.setup_commands()
    assert main_job == "pip install -e . && python pipeline.py run --local"  # what the stand-ins expect below
    assert tests == 'pip install -e ".[test]" && python -m pytest'
    expected = ["git clone --quiet", f"venv {newcomer}/venv", "pip install -e .", "python pipeline.py run --local",
                f"venv {newcomer}/test-venv", "pip install -e .[test]", "python -m pytest", "ruff check ."]
    assert [c if not c.startswith("git clone") else "git clone --quiet" for c in commands] == expected
    by_command = {c["command"]: c for c in calls}
    # The newcomer's command: in the fresh clone, in its own venv, before anything installs the test extra.
    for command in ("pip install -e .", "python pipeline.py run --local"):
        assert (by_command[command]["cwd"], by_command[command]["venv"]) == (clone, f"{newcomer}/venv")
    # The tests: in the checkout, in a second new venv, with the docker tier, every image, and strict skips.
    for command in ("pip install -e .[test]", "python -m pytest", "ruff check ."):
        call = by_command[command]
        assert (call["cwd"], call["venv"]) == (str(tmp_path / "repo"), f"{newcomer}/test-venv")
        assert (call["strict"], call["flavors"], call["docker"]) == ("1", "cpu,validate", "1")
    assert not Path(newcomer).exists()  # cleaned up


@pytest.mark.parametrize("failing", ["python pipeline.py run --local", "python -m pytest", "ruff check ."])
def test_ci_fails_when_a_step_fails(tmp_path, failing):
    process, calls = run_ci(tmp_path, fail=failing)
    assert process.returncode != 0
    assert [c["command"] for c in calls][-1] == failing  # nothing after the failed step


def test_ci_fails_without_the_real_faces(tmp_path):
    process, calls = run_ci(tmp_path, shared=False)
    assert process.returncode == 1 and calls == []
    assert "ARCFACE_SHARED_FACES" in process.stderr and str(tmp_path / "faces") in process.stderr


def _pytest(tmp_path: Path, body: str, strict: bool) -> subprocess.CompletedProcess:
    (tmp_path / "test_throwaway.py").write_text(textwrap.dedent(body))
    environment = {k: v for k, v in os.environ.items() if k != STRICT_SKIPS_ENV}
    if strict:
        environment[STRICT_SKIPS_ENV] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_throwaway.py")],
                          cwd=REPO, env=environment, capture_output=True, text=True, timeout=120)


SKIPS = """
    import pytest

    def test_runs():
        pass

    def test_skips():
        pytest.skip("the serve extra is not installed")
"""


def test_strict_skips_fail_a_run_with_an_unlisted_skip(tmp_path):
    assert _pytest(tmp_path, SKIPS, strict=False).returncode == 0
    strict = _pytest(tmp_path, SKIPS, strict=True)
    assert strict.returncode == 1
    assert "test_skips: the serve extra is not installed" in strict.stdout and "ALLOWED_SKIPS" in strict.stdout


def test_strict_skips_accept_an_allowed_reason(tmp_path):
    allowed = SKIPS.replace("the serve extra is not installed", "with a GPU the GPUs are the devices, not the CPU")
    assert _pytest(tmp_path, allowed, strict=True).returncode == 0
