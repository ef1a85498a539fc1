"""The repository's docker/ folder (image recipes) never stands in for the Docker SDK, from any entry point.

Run from the repository root, Python puts the root first on sys.path, and a folder without ``__init__.py`` is
importable as a namespace package: without the SDK installed, ``import docker`` inside kfp.local found docker/
and failed with "module 'docker' has no attribute 'DockerClient'". The SDK is a base dependency now, and a
regular package wins over a namespace one wherever it is on the path.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

IS_THE_SDK = "import docker, sys; sys.exit(0 if hasattr(docker, 'DockerClient') else 3)"


def _python(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_docker_in_this_test_process_is_the_sdk():
    import docker

    assert hasattr(docker, "DockerClient"), docker.__path__


@pytest.mark.parametrize("entry", [
    ["-c", IS_THE_SDK],                                    # a notebook or REPL started in the repository root
    ["-c", "import kfp.local.docker_task_handler"],        # what `pipeline.py run --local` imports
    ["-c", f"import runpy, sys; sys.argv = ['train.py', '--help']; runpy.run_path('train.py'); {IS_THE_SDK}"],
    ["pipeline.py", "compile", "--help"],
])
def test_every_entry_point_in_the_repository_root_finds_the_sdk(entry):
    done = _python(*entry)
    assert done.returncode == 0, done.stderr[-2000:]


def test_without_the_sdk_the_local_run_says_what_to_install():
    # Hide the installed SDK, as on a machine where it was never installed: docker/ is then what `import docker`
    # finds, and the run must stop with a message that names the fix instead of kfp's AttributeError.
    hide = (
        "import sys, importlib.abc, importlib.machinery\n"
        "class HideSDK(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'docker':\n"
        "            return importlib.machinery.PathFinder.find_spec(name, [p for p in sys.path if 'site-packages' not in p])\n"
        "sys.meta_path.insert(0, HideSDK())\n"
        "import pipeline\n"
        "sys.exit(pipeline.main(['run', '--local', '--output', sys.argv[1]]))\n"
    )
    done = _python("-c", hide, "/nonexistent-output-never-written")
    assert done.returncode == 2
    assert "not the Docker SDK that kfp.local needs" in done.stderr and "pip install -e ." in done.stderr
    assert str(REPO / "docker") in done.stderr
