"""The house has no import cycles and every import between packages points down (STYLE.md's picture).

Every ``import probe_kit...`` counts, including those inside functions: a lazy import still
couples a lower package to a higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "probe_kit"

# Higher may import lower; packages on one level may not import each other.
LEVELS = {
    "__main__": 9,
    "cli": 8,
    "api": 7,
    "experiment": 6,
    "report": 5,
    "reference": 5,
    "analyzers": 4,
    "heads": 4,
    "training": 3,
    "cache": 2,
    "decision": 2,
    "models": 1,
    "metrics": 0.5,
    "data": 0,
    "console": -0.5,
    "ops": -1,
    "io": -1,
    "distributed": -1,
    "options": -2,
    "errors": -3,
    "": -4,  # probe_kit/__init__.py: the version (its front door names resolve lazily, by string)
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "probe_kit":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "probe_kit"}
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(path): _imports(path) for path in PACKAGE.rglob("*.py")}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_package_has_a_level():
    missing = sorted({_package(m) for m in _graph()} - set(LEVELS))
    assert not missing, f"give these packages a level in LEVELS: {missing}"


def test_imports_point_down():
    upward = [
        f"{module} -> {target}"
        for module, targets in _graph().items()
        for target in targets
        if _package(module) != _package(target) and LEVELS[_package(target)] >= LEVELS[_package(module)]
    ]
    assert not upward, "imports that point up or sideways:\n" + "\n".join(sorted(upward))


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle between modules (depth-first search), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            target = target if target in graph else target.rsplit(".", 1)[0]  # `from pkg import module`
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target in graph and target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize(
    "graph, expected",
    [
        ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
    ],
)
def test_cycle_finder_finds_cycles(graph, expected):
    assert _cycle(graph) == expected
