"""The README opens with the two set-up commands, and CI runs the second one."""

from __future__ import annotations

import re

from tests.conftest import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    first_block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert first_block and text.index(first_block.group(0)) < text.index("\n## "), "the commands come first"
    return [line for line in first_block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_main_job_and_tests():
    main_job, tests = readme_commands()
    assert main_job.startswith("pip install -e . && python pipeline.py run --local")
    assert tests.startswith('pip install -e ".[test]" && python -m pytest')


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    test_command = readme_commands()[1].split("&&")[-1].strip().replace("python ", "python3 ")
    assert test_command in ci
    assert 'pip install --quiet -e ".[test]"' in ci
