"""The README opens with the two set-up commands (tests/core/test_ci.py runs .ci/run to see that CI runs them), stays
a map, and its pages' links resolve."""

from __future__ import annotations

import re

from tests import readme

REPO = readme.README.parent
#: The README is a map; reference goes to docs/, figures to benchmarks/README.md, their history to the results log.
README_MAX_LINES = 200
PAGES = [readme.README, *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "benchmarks").glob("*.md"))]


def test_readme_opens_with_main_job_and_tests():
    main_job, tests = readme.setup_commands()
    assert main_job == "pip install -e . && python pipeline.py run --local"
    assert tests == 'pip install -e ".[test]" && python -m pytest'


def test_every_tested_block_is_a_bash_block():
    blocks = readme.tested_blocks()
    assert blocks, f"the README marks no block with {readme.TESTED_MARKER}"
    assert all(block.strip() for block in blocks)


def test_readme_is_a_map():
    lines = readme.README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (f"the README has {len(lines)} lines: move reference to docs/ and "
                                            "figures to benchmarks/README.md or benchmarks/RESULTS_LOG.md")


def test_only_the_readme_marks_blocks_to_run():
    """tests/readme.py runs the README's marked blocks only: a marked block elsewhere would silently not run."""
    marker = re.compile(f"^{re.escape(readme.TESTED_MARKER)}$", re.M)
    marked = [page.relative_to(REPO) for page in PAGES[1:] if marker.search(page.read_text(encoding="utf-8"))]
    assert not marked, f"{marked} mark blocks as run, but tests/readme.py reads only README.md"


def test_relative_links_of_the_readme_docs_and_benchmarks_resolve():
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)  # code is not links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            path = target.split("#", 1)[0]
            if path and "://" not in path and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, broken
