"""The package's layers, read from the source (AST; imports inside functions count): no import cycle, the public
math imports only torch and itself, no module over 500 lines."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "rlhflab"
MATH = {
    "rlhflab.ops",
    "rlhflab.algorithms.advantages",
    "rlhflab.algorithms.losses",
    "rlhflab.algorithms.kl_control",
    "rlhflab.algorithms.preference",
}
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def imported(name: str) -> set[str]:
    """Every module ``name`` imports, at any depth of its code: package modules by full name, others by their top
    name. ``from a import b`` names the module a.b when b is one."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return {m if m in MODULES or m.split(".")[0] == PACKAGE else m.split(".")[0] for m in found}


def own_graph() -> dict[str, set[str]]:
    own = set(MODULES)
    return {m: {d for d in imported(m) if d in own and d != m} for m in own}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_checker_sees_function_level_imports_and_cycles():
    assert "rlhflab.models.tiny" in imported("rlhflab.cli")  # cli imports it inside a function
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(own_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_math_imports_only_torch_and_itself():
    """Importing a module runs its packages' ``__init__`` too: those must stay free of imports as well."""
    for name in sorted(MATH):
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        for module in [name, *parents]:
            outside = {
                m for m in imported(module) if m != "torch" and m not in sys.stdlib_module_names and m not in MATH
            }
            assert not outside, f"{module} imports {sorted(outside)}: the math may import only torch and itself"


def test_no_module_over_500_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def layers_summary() -> str:
    """``python tests/unit/test_layers.py``: who imports whom among the package's own modules."""
    graph = own_graph()
    return "\n".join(
        f"{m}: {', '.join(sorted(d.removeprefix('rlhflab.') for d in graph[m])) or '-'}" for m in sorted(graph)
    )


if __name__ == "__main__":
    print(layers_summary())
