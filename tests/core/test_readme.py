"""The README opens with the two set-up commands, and CI runs both as the README writes them."""

from __future__ import annotations

from tests import readme
from tests.conftest import REPO


def test_readme_opens_with_main_job_and_tests():
    main_job, tests = readme.setup_commands()
    assert main_job == "pip install -e . && python pipeline.py run --local"
    assert tests == 'pip install -e ".[test]" && python -m pytest'


def test_ci_runs_both_commands_read_from_the_readme():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    # Read, not copied: a README edit changes what CI runs.
    assert "$(python3 -m tests.readme main)" in ci and "$(python3 -m tests.readme tests)" in ci
    assert "&& " + readme.setup_commands()[1] + ")" in ci  # the test command itself, in its new venv
    assert 'python3 -m venv "$newcomer/venv"' in ci and "git clone" in ci
    assert 'python3 -m venv "$newcomer/test-venv"' in ci  # the test command gets a brand-new venv too
    # The newcomer's command runs before anything installs the test extra.
    assert ci.index("tests.readme main") < ci.index("tests.readme tests")
    assert "pip install" not in ci.split("tests.readme main")[0]


def test_every_tested_block_is_a_bash_block():
    blocks = readme.tested_blocks()
    assert blocks, f"the README marks no block with {readme.TESTED_MARKER}"
    assert all(block.strip() for block in blocks)
