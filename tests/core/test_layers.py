"""Issue #34 item 2: no import cycles. The layer table in the package docstring (src/arcface/__init__.py) is the
one definition; this test reads it and walks every module of src/arcface with ast:

* the module-level imports (package ``__init__`` modules included: importing ``p.m`` runs ``p/__init__`` first)
  have no cycle;
* no module-level import goes to a higher layer;
* a function-local import defers a third-party package the module does not load at module level (the reason
  the docstring gives); a local import of the standard library, of a package the module already loads, or of
  a module of the package that loads nothing more is a failure.

Imports under ``if TYPE_CHECKING:`` are for the type checker only and are not walked.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "arcface"
STANDARD_LIBRARY = frozenset(sys.stdlib_module_names) | {"__future__"}
RULE_CYCLE = "module-level import cycle"
RULE_LAYER = "module-level import of a higher layer"
RULE_LOCAL = "function-local import that defers no third-party package: import it at module level"


@dataclasses.dataclass(frozen=True)
class Import:
    target: str  # a module of the package, or a third-party/standard top-level name
    line: int
    local: bool  # inside a function


# --------------------------------------------------------------------------------------------------------
# Reading the package
# --------------------------------------------------------------------------------------------------------
def module_files(src: Path, package: str) -> dict[str, Path]:
    """{dotted module name: file} of every module of ``src/package``."""
    files = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: dict[str, Path],
             package: str) -> list[str]:
    """What ``node`` imports: modules of the package by their full name, anything else by its top-level name."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            here = module.split(".") if is_package else module.split(".")[:-1]
            here = here[:len(here) - node.level + 1]
            base = ".".join(here + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    resolved = []
    for name in names:
        if name.split(".")[0] != package:
            resolved.append(name.split(".")[0])
            continue
        while name not in modules:  # `import arcface.data.validate.x` can only name a module or an attribute
            name = name.rsplit(".", 1)[0]
        resolved.append(name)
    return resolved


def imports_of(module: str, path: Path, modules: dict[str, Path], package: str) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[Import] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.extend(dict.fromkeys(Import(target, child.lineno, local) for target in
                                           _targets(child, module, path.name == "__init__.py", modules, package)))
            visit(child, local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    visit(tree, False)
    return found


def ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


# --------------------------------------------------------------------------------------------------------
# The layer table
# --------------------------------------------------------------------------------------------------------
def read_layers(init_file: Path) -> list[tuple[str, list[str]]]:
    """[(layer, [module patterns])], lowest first, from the ``====`` table of the package docstring."""
    docstring = ast.get_docstring(ast.parse(init_file.read_text())) or ""
    lines = docstring.splitlines()
    rules = [i for i, line in enumerate(lines) if re.fullmatch(r"=+ +=+", line.strip())]
    if len(rules) < 3:
        raise AssertionError(f"{init_file}: the docstring has no layer table (a ==== table: layer, modules)")
    layers: list[tuple[str, list[str]]] = []
    for line in lines[rules[1] + 1:rules[2]]:
        name, _, rest = line.partition(" ")
        patterns = [p.strip() for p in rest.split(",") if p.strip()]
        if line.startswith(" ") and layers:  # a row continued on the next line
            layers[-1][1].extend(p.strip() for p in line.split(",") if p.strip())
        elif name:
            layers.append((name, patterns))
    return layers


def layer_index(layers: list[tuple[str, list[str]]], package: str) -> Callable[[str], tuple[int, str] | None]:
    """module -> (index of its layer, layer name); an exact name wins over ``p.*``, a longer ``p.*`` over a
    shorter one. None when the table does not place it."""
    exact, wildcards = {}, {}
    for index, (name, patterns) in enumerate(layers):
        for pattern in patterns:
            full = package if pattern == "__init__" else f"{package}.{pattern}"
            if full.endswith(".*"):
                wildcards[full[:-2]] = (index, name)
            else:
                exact[full] = (index, name)

    def of(module: str):
        if module in exact:
            return exact[module]
        prefixes = [p for p in wildcards if module == p or module.startswith(p + ".")]
        return wildcards[max(prefixes, key=len)] if prefixes else None

    return of


# --------------------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------------------
def _edges(modules: dict[str, Path], found: dict[str, list[Import]]) -> dict[str, dict[str, int]]:
    """{importer: {module: line}}: module-level imports of the package's modules, plus the packages whose
    ``__init__`` importing them runs (those the importer's own package has not run already)."""
    edges: dict[str, dict[str, int]] = {m: {} for m in modules}
    for module, imports in found.items():
        own = set(ancestors(module)) | {module}
        for imp in imports:
            if imp.local or imp.target not in modules:
                continue
            for target in [*ancestors(imp.target), imp.target]:
                if target in modules and target not in own:
                    edges[module].setdefault(target, imp.line)
    return edges


def _cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each holds a cycle, or several."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            component.append(v)
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return components


def _dependencies(modules: dict[str, Path], found: dict[str, list[Import]],
                  edges: dict[str, dict[str, int]]) -> dict[str, frozenset[str]]:
    """The third-party packages each module loads at module level, itself or through what it imports."""
    own = {m: {i.target for i in found[m] if not i.local and i.target not in modules
               and i.target not in STANDARD_LIBRARY} for m in modules}
    result: dict[str, frozenset[str]] = {}

    def deps(m: str, seen: frozenset[str]) -> frozenset[str]:
        if m in result:
            return result[m]
        total = set(own[m])
        for n in [*edges[m], *(a for a in ancestors(m) if a in modules)]:
            if n not in seen:
                total |= deps(n, seen | {m})
        if not seen:  # a value computed inside a cycle may miss part of it; only the outermost one is kept
            result[m] = frozenset(total)
        return frozenset(total)

    return {m: deps(m, frozenset()) for m in modules}


def violations(src: Path, package: str) -> list[str]:
    """Every breach of the three rules in ``src/package``, as 'file:line: rule: details'."""
    modules = module_files(src, package)
    found = {m: imports_of(m, path, modules, package) for m, path in modules.items()}
    where = {m: str(path.relative_to(src.parent)) for m, path in modules.items()}
    edges = _edges(modules, found)
    problems = [f"{where[cycle[0]]}:{edges[cycle[0]][next(t for t in cycle if t in edges[cycle[0]])]}: "
                f"{RULE_CYCLE} among {', '.join(cycle)}" for cycle in _cycles(edges)]
    layer_of = layer_index(read_layers(modules[package]), package)
    for module in modules:
        if layer_of(module) is None:
            problems.append(f"{where[module]}:1: {module} is in no layer: add it to the table in "
                            f"{where[package]}")
    for module, targets in edges.items():
        for target, line in targets.items():
            mine, theirs = layer_of(module), layer_of(target)
            if mine and theirs and theirs[0] > mine[0]:
                problems.append(f"{where[module]}:{line}: {RULE_LAYER}: {module} ({mine[1]}) imports {target} "
                                f"({theirs[1]})")
    deps = _dependencies(modules, found, edges)
    for module, imports in found.items():
        for imp in (i for i in imports if i.local):
            if imp.target in modules:
                pointless = not deps[imp.target] - deps[module]
            else:
                pointless = imp.target in STANDARD_LIBRARY or imp.target in deps[module]
            if pointless:
                problems.append(f"{where[module]}:{imp.line}: {RULE_LOCAL}: {imp.target} ({module} loads "
                                f"{', '.join(sorted(deps[module])) or 'only the standard library'})")
    return sorted(problems)


# --------------------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------------------
def test_the_package_keeps_its_layers():
    problems = violations(ROOT / "src", PACKAGE)
    assert not problems, "\n".join(problems)


def test_every_layer_of_the_table_names_a_module():
    layers = read_layers(ROOT / "src" / PACKAGE / "__init__.py")
    assert [name for name, _ in layers] == ["base", "contracts", "data", "learning", "operations", "commands"]
    modules = module_files(ROOT / "src", PACKAGE)
    layer_of = layer_index(layers, PACKAGE)
    for name, patterns in layers:
        for pattern in patterns:
            full = PACKAGE if pattern == "__init__" else f"{PACKAGE}.{pattern.removesuffix('.*')}"
            assert full in modules, f"the layer table names {pattern} ({name}), which is no module"
    assert layer_of("arcface.data")[1] == "base" and layer_of("arcface.data.align")[1] == "data"


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


TABLE = '''"""A package.

=====  =======
layer  modules
=====  =======
low    __init__, a, b, sub
high   sub.*, c
=====  =======
"""
'''


def test_a_clean_package_passes(tmp_path):
    _write(tmp_path, {"pkg/__init__.py": TABLE, "pkg/a.py": "import os\n", "pkg/b.py": "from pkg import a\n",
                      "pkg/sub/__init__.py": "", "pkg/sub/x.py": "import numpy\nfrom pkg import b\n",
                      "pkg/c.py": """
                          from typing import TYPE_CHECKING

                          from pkg.sub import x

                          if TYPE_CHECKING:
                              from pkg import c


                          def f():
                              import tensorflow  # deferred: c does not load it
                          """})
    assert violations(tmp_path, "pkg") == []


@pytest.mark.parametrize("files, expected", [
    ({"pkg/a.py": "from pkg import b\n", "pkg/b.py": "import pkg.a\n"},
     f"pkg/a.py:1: {RULE_CYCLE} among pkg.a, pkg.b"),
    # a package __init__ that imports back: importing pkg.sub.x runs pkg/sub/__init__ first
    ({"pkg/sub/__init__.py": "from pkg.c import f\n", "pkg/sub/x.py": "", "pkg/c.py": "from pkg.sub import x\n"},
     f"{RULE_CYCLE} among pkg.c, pkg.sub"),
    ({"pkg/a.py": "from pkg.c import f\n", "pkg/c.py": "def f(): pass\n"},
     f"pkg/a.py:1: {RULE_LAYER}: pkg.a (low) imports pkg.c (high)"),
    ({"pkg/c.py": "def f():\n    from pkg import a\n"}, f"pkg/c.py:2: {RULE_LOCAL}: pkg.a"),
    ({"pkg/c.py": "def f():\n    import json\n"}, f"pkg/c.py:2: {RULE_LOCAL}: json"),
    ({"pkg/c.py": "import numpy\n\n\ndef f():\n    import numpy.linalg\n"}, f"pkg/c.py:5: {RULE_LOCAL}: numpy"),
    # c loads numpy through sub.x already: a local import of a, which loads only numpy, defers nothing
    ({"pkg/a.py": "import numpy\n", "pkg/c.py": "from pkg.sub import x\n\n\ndef f():\n    from pkg import a\n",
      "pkg/sub/x.py": "import numpy\n"}, f"pkg/c.py:5: {RULE_LOCAL}: pkg.a"),
    ({"pkg/d.py": ""}, "pkg.d is in no layer"),
])
def test_each_rule_fails_when_broken(tmp_path, files, expected):
    _write(tmp_path, {"pkg/__init__.py": TABLE, "pkg/a.py": "", "pkg/b.py": "", "pkg/c.py": "",
                      "pkg/sub/__init__.py": "", **files})
    problems = violations(tmp_path, "pkg")
    assert any(expected in problem for problem in problems), "\n".join(problems)
