"""The import graph of both packages is acyclic, counting imports inside functions too (a
function-level import hides a cycle from Python's loader, not from a reader), and the pipeline's
layers hold: the library never imports a command, and no command imports the command line.

A cycle means two modules each need the other: one of them is not where it should be. The
check reads the source with `ast` (nothing is imported) and prints the cycle it finds."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"susy_pipeline": ROOT / "images" / "pipeline" / "susy_pipeline",
            "susy_operator": ROOT / "operator" / "susy_operator"}


def module_name(package: str, folder: Path, path: Path) -> str:
    parts = path.relative_to(folder).with_suffix("").parts
    return ".".join([package, *[p for p in parts if p != "__init__"]])


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    modules: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            modules[module_name(package, folder, path)] = path
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        base = name if is_package else name.rsplit(".", 1)[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)] if node.level > 1 else anchor
                    prefix = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                targets = [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]
            for target in targets:
                if target in modules and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {n: WHITE for n in graph}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = GREY
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == GREY:
                return stack[stack.index(nxt):] + [nxt]
            if colour[nxt] == WHITE:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = BLACK
        return None

    for node in sorted(graph):
        if colour[node] == WHITE:
            found = visit(node)
            if found:
                return found
    return None


def test_the_checker_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_the_import_graph_is_acyclic(package: str) -> None:
    graph = import_graph()
    assert any(n.startswith(package) for n in graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


COMMANDS = "susy_pipeline.commands"
# The command line and `python -m susy_pipeline`: above the commands.
ENTRY_POINTS = {"susy_pipeline.cli", "susy_pipeline.__main__"}


def is_command(module: str) -> bool:
    return module == COMMANDS or module.startswith(COMMANDS + ".")


def test_no_library_module_imports_a_command() -> None:
    graph = import_graph()
    library = [n for n in graph if n.startswith("susy_pipeline") and not is_command(n) and n not in ENTRY_POINTS]
    assert "susy_pipeline.evaluation" in library and "susy_pipeline.commands.evaluate" in graph
    wrong = {n: sorted(t for t in graph[n] if is_command(t)) for n in library}
    assert not {n: t for n, t in wrong.items() if t}, "library modules that import commands"
    operator = {n: sorted(t for t in edges if is_command(t)) for n, edges in graph.items()
                if n.startswith("susy_operator")}
    assert not {n: t for n, t in operator.items() if t}, "operator modules that import commands"


def test_no_command_imports_the_command_line() -> None:
    graph = import_graph()
    wrong = {n: sorted(graph[n] & ENTRY_POINTS) for n in graph if is_command(n)}
    assert not {n: t for n, t in wrong.items() if t}
