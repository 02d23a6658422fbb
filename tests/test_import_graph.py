"""natdeploy's own modules import each other without cycles (imports inside functions count too).

A module importing one of its ancestor packages is left out: Python has always initialised the ancestors of a
module before the module itself runs, so such an import cannot close a cycle at import time.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "natdeploy"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The natdeploy modules that ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    wanted: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            wanted += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from pkg import sub` imports the submodule pkg.sub where there is one, else names of pkg.
            wanted += [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    found = set()
    for target in wanted:
        while target and target not in modules:  # natdeploy.x.name -> natdeploy.x
            target = target.rpartition(".")[0]
        if target and target != name and not name.startswith(target + "."):
            found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(name, path, modules) for name, path in modules.items()}


def test_graph_sees_lazy_imports():
    graph = import_graph()
    assert "natdeploy.space" in graph["natdeploy.cli.arch"]  # imported inside run()
    assert "natdeploy.errors" in graph["natdeploy.space"]


def test_no_import_cycles():
    graph = import_graph()
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        cycle = exc.args[1]
        raise AssertionError("import cycle: " + " -> ".join(reversed(cycle))) from None


def test_no_library_module_imports_the_cli():
    graph = import_graph()
    users = sorted(m for m, deps in graph.items() if not m.startswith("natdeploy.cli")
                   and m != "natdeploy.__main__" and any(d.startswith("natdeploy.cli") for d in deps))
    assert users == []
