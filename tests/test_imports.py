"""The modules of ``src/cvgtext`` import one another one way: no import cycle, imports inside
functions included (they hide a cycle from Python until the function runs, not from the reader)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers.runs import ROOT


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package at ``package_dir``."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = (package_dir.name, *path.relative_to(package_dir).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def imported_names(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    """The dotted name of everything an ``import`` or ``from ... import`` anywhere in ``tree``
    imports, relative imports made absolute (``from a import b`` gives ``a.b``)."""
    package = module if is_package else module.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports: for each imported name the longest
    module it starts with (``from a import b`` imports the module ``a.b`` if there is one, else ``a``)."""
    modules = module_names(package_dir)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name in imported_names(tree, module, path.name == "__init__.py"):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                graph[module].add(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None when the graph has none."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(module: str) -> list[str] | None:
        path.append(module)
        on_path.add(module)
        for imported in sorted(graph[module]):
            if imported in on_path:
                return path[path.index(imported) :] + [imported]
            if imported not in done:
                cycle = visit(imported)
                if cycle:
                    return cycle
        path.pop()
        on_path.discard(module)
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph(ROOT / "src" / "cvgtext")
    assert len(graph) == len(list((ROOT / "src" / "cvgtext").rglob("*.py")))
    assert sum(map(len, graph.values())) > len(graph), "the walk found almost no imports"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def write_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkg"
    for name, source in {"__init__.py": "", **files}.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(source)
    return package


@pytest.mark.parametrize(
    "files, expected",
    [
        # hidden in a function, and closed by a relative import of the package's module
        (
            {
                "a.py": "import pkg.b\n",
                "b.py": "def f():\n    from pkg.c import thing\n",
                "c.py": "from . import a\nthing = 1\n",
            },
            ["pkg.a", "pkg.b", "pkg.c", "pkg.a"],
        ),
        # ``from pkg import module`` and an import inside a method of a class
        (
            {"a.py": "from pkg import b\n", "b.py": "class B:\n    def f(self):\n        import pkg.a as alias\n"},
            ["pkg.a", "pkg.b", "pkg.a"],
        ),
        # through a subpackage, with ``from ..a import name``
        (
            {"a.py": "from pkg.sub.c import x\n", "sub/__init__.py": "", "sub/c.py": "from ..a import y\nx = 1\n"},
            ["pkg.a", "pkg.sub.c", "pkg.a"],
        ),
        (
            {
                "a.py": "if True:\n    try:\n        from pkg.b import *\n    except ImportError:\n        pass\n",
                "b.py": "from .a import z\n",
            },
            ["pkg.a", "pkg.b", "pkg.a"],
        ),
    ],
)
def test_a_cycle_is_found_and_named(tmp_path, files, expected):
    assert find_cycle(import_graph(write_package(tmp_path, files))) == expected


def test_imports_that_run_one_way_are_no_cycle(tmp_path):
    package = write_package(
        tmp_path,
        {
            "a.py": "import pkg.b\nfrom pkg import c\nimport os\nfrom collections import OrderedDict\n",
            "b.py": "def f():\n    from pkg.c import thing\n    from . import c\n",
            "c.py": "import pkg\nthing = 1\n",  # the package itself (empty __init__): no edge back
        },
    )
    graph = import_graph(package)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b", "pkg.c"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg"}}
    assert find_cycle(graph) is None
