"""The package's shape, kept: no module over 300 lines, and no import cycle between its modules.

The import graph is built from every ``import`` statement of ``lightning_dsrl``, those inside functions
and under ``if TYPE_CHECKING:`` included, so that a cycle cannot hide behind a function-local import.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_dsrl"
MAX_LINES = 300


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports. ``from a.b import c`` names module ``a.b.c`` when it
    exists, else module (or package) ``a.b``; relative imports are resolved against the importing module."""
    paths = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in paths}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # from . import x / from ..a import x
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base for alias in node.names]
            graph[name].update(t for t in targets if t in paths and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_is_longer_than_300_lines():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these along their jobs: {long}"


def test_no_import_cycle_between_the_packages_modules():
    graph = import_graph()
    assert len(graph) > 40 and "lightning_dsrl.module" in graph["lightning_dsrl"]
    assert cycles(graph) == []


def test_the_cycle_finder_finds_one_hidden_in_a_function(tmp_path):
    package = tmp_path / "lightning_dsrl"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from lightning_dsrl import b\n")
    (package / "b.py").write_text("def f():\n    from lightning_dsrl.a import x  # a local import dodging the cycle\n")
    (package / "c.py").write_text("from . import a\n")
    graph = import_graph(package)
    assert graph["lightning_dsrl.b"] == {"lightning_dsrl.a"} and graph["lightning_dsrl.c"] == {"lightning_dsrl.a"}
    assert cycles(graph) == [["lightning_dsrl.a", "lightning_dsrl.b"]]
