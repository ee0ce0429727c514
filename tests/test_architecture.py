"""The layout rules of style §3.1, checked on the source with ``ast`` (nothing is imported).

The import graph counts every ``import`` statement of a module, at module level *and* inside
functions: a function-level import only defers a circle to the first call, and it still means the
two modules cannot be understood (or moved) apart. Two kinds of blocks are left out because they
never run as part of importing the module: ``if TYPE_CHECKING:`` (annotations only) and
``if __name__ == "__main__":`` (runs in the ``__main__`` module, a different module object).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "blankfill"
MAX_LINES = 400
MAX_LINES_MODEL = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _skipped(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` and ``if __name__ == "__main__":`` blocks."""
    if not isinstance(node, ast.If):
        return False
    test = ast.unparse(node.test)
    return test in ("TYPE_CHECKING", "typing.TYPE_CHECKING") or test.startswith("__name__ ==")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, outside the skipped blocks."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _skipped(child):
                for sub in child.orelse:  # the else branch of such a block does run
                    visit(ast.Module(body=[sub], type_ignores=[]))
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def imported_modules(name: str) -> set[str]:
    """The package modules that module ``name`` imports (the edges of the graph)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in _imports(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # ``from pkg import sub`` imports the submodule; ``from mod import name`` the module
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        out.update(t for t in targets if t in MODULES and t != name)
    return out


GRAPH = {name: imported_modules(name) for name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (``[a, b, ..., a]``), or None. Depth-first search with colours."""
    colour = dict.fromkeys(graph, 0)  # 0 new, 1 on the current path, 2 done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        colour[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == 1:
                return path[path.index(nxt) :] + [nxt]
            if colour[nxt] == 0 and (cycle := dfs(nxt)):
                return cycle
        path.pop()
        colour[node] = 2
        return None

    for start in sorted(graph):
        if colour[start] == 0 and (cycle := dfs(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_function_level_imports():
    # filling.BlankFiller.from_pretrained imports blankfill.folder inside the method
    assert "blankfill.folder" in GRAPH["blankfill.filling"]
    assert "blankfill.convert" in GRAPH["blankfill.pretrained"]  # ``from . import convert``
    assert len(GRAPH) > 40


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_metrics_are_a_leaf_module():
    assert GRAPH["blankfill.eval"] == set()


def test_argparse_only_in_commands():
    for name, path in MODULES.items():
        if name.startswith("blankfill.commands"):
            continue
        tree = ast.parse(path.read_text())
        names = {
            a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names
        }
        names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "argparse" not in names, f"{path.relative_to(SRC)} imports argparse"


def test_library_modules_never_import_commands():
    entry = {"blankfill.cli", "blankfill.__main__"}
    for name, deps in GRAPH.items():
        if name.startswith("blankfill.commands") or name in entry:
            continue
        bad = sorted(d for d in deps if d.startswith("blankfill.commands") or d in entry)
        assert not bad, f"{name} imports {bad}"


def test_every_verb_is_a_command_module():
    from blankfill import cli
    from blankfill.commands import command_module

    files = {p.stem for p in (PKG / "commands").glob("*.py") if not p.stem.startswith("_")}
    assert {v.replace("-", "_") for v in cli.VERBS} == files
    for verb in cli.VERBS:
        mod = command_module(verb)
        assert isinstance(mod.HELP, str) and mod.HELP
        assert callable(mod.configure) and callable(mod.run)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size_budget(name):
    n = len(MODULES[name].read_text().splitlines())
    limit = MAX_LINES_MODEL if name == "blankfill.model" else MAX_LINES
    assert n <= limit, f"{MODULES[name].relative_to(SRC)} has {n} lines (budget {limit})"
