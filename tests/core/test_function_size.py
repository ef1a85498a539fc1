"""Issue #34 item 4: small pieces. No function or method in the library (src/), the components or the pipeline
(kfp_pipeline/, pipeline.py) runs over 60 lines, so that each one fits on a screen and can be read, and named, as
one idea."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 60


def _sources() -> list[Path]:
    files = [ROOT / "pipeline.py", *(path for folder in ("src", "components", "kfp_pipeline")
                                     for path in (ROOT / folder).rglob("*.py"))]
    return sorted(path for path in files if not path.name.startswith("test_"))


def _length(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    # From the `def` line to the last line of the body: decorators are not part of what one reads as the function.
    return node.end_lineno - node.lineno + 1


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({_length(node)} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _length(node) > LIMIT
    ]


def test_the_sources_are_found():
    names = {path.relative_to(ROOT).as_posix() for path in _sources()}
    assert {"pipeline.py", "src/arcface/train.py", "kfp_pipeline/dag.py"} <= names
    assert not any(name.rsplit("/", 1)[-1].startswith("test_") for name in names)


def test_no_function_is_over_60_lines():
    long = [entry for path in _sources() for entry in _long_functions(path)]
    assert not long, f"functions over {LIMIT} lines:\n" + "\n".join(long)
