"""The README's runnable commands, read from the README itself (stdlib only: `.ci/run` uses it before any install).

    python3 -m tests.readme main       the first set-up command (what a newcomer runs first)
    python3 -m tests.readme tests      the second one (the test command)
    python3 -m tests.readme examples   every block marked as run by the tests, as one bash script

Also :func:`copy_checkout`, for the test and the benchmark that run the first command in a copy of the checkout.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
#: A ```bash block right after this marker is run by tests/core/test_readme_examples.py.
TESTED_MARKER = "<!-- run by tests/core/test_readme_examples.py -->"
_BLOCK = re.compile(r"```bash\n(.*?)```", re.S)


def _text() -> str:
    return README.read_text(encoding="utf-8")


def setup_commands() -> list[str]:
    """The two lines of the README's first code block: (main job, tests)."""
    text = _text()
    first = _BLOCK.search(text)
    if not first or text.index(first.group(0)) > text.index("\n## "):
        raise ValueError("the README must open with a ```bash block before its first section")
    return [line for line in first.group(1).splitlines() if line.strip()]


def tested_blocks() -> list[str]:
    """The bodies of the ```bash blocks that follow :data:`TESTED_MARKER`, in README order."""
    text = _text()
    blocks = []
    for marker in re.finditer(f"^{re.escape(TESTED_MARKER)}$", text, re.M):  # a line of its own, not a mention
        block = _BLOCK.match(text, marker.end() + 1)
        if block is None:
            raise ValueError(f"README: {TESTED_MARKER} is not followed by a ```bash block")
        blocks.append(block.group(1))
    return blocks


def copy_checkout(dest: Path) -> Path:
    """The files git tracks or would track in this checkout (uncommitted edits included), copied to ``dest``."""
    repo = README.parent
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo, check=True,
                            capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        if (repo / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, dest / name)
    return dest


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "main":
        print(setup_commands()[0])
    elif what == "tests":
        print(setup_commands()[1])
    elif what == "examples":
        print("\n".join(tested_blocks()))
    else:
        sys.exit("usage: python3 -m tests.readme main|tests|examples")
