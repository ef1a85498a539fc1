"""The README opens with the two set-up commands (tests/core/test_ci.py runs .ci/run to see that CI runs them)."""

from __future__ import annotations

from tests import readme


def test_readme_opens_with_main_job_and_tests():
    main_job, tests = readme.setup_commands()
    assert main_job == "pip install -e . && python pipeline.py run --local"
    assert tests == 'pip install -e ".[test]" && python -m pytest'


def test_every_tested_block_is_a_bash_block():
    blocks = readme.tested_blocks()
    assert blocks, f"the README marks no block with {readme.TESTED_MARKER}"
    assert all(block.strip() for block in blocks)
