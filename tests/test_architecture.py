"""The folder layout is the architecture: imports run one way, and no module or function grows
past what a newcomer can read.

    .venv/bin/python -m pytest tests/test_architecture.py     # check the rules
    .venv/bin/python -m tests.test_architecture               # print the package import map

Imports are read from the source (ast), function-level ones included: a lazy import is still a
dependency.
"""

from __future__ import annotations

import ast
import bisect
import io
import tokenize
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Lowest first: each package may import only packages before it in this list (and itself).
LAYERS = [
    "core",
    "registry",
    "inference",
    "feedback",
    "promotion",
    "trainer",
    "synthetic",
    "gateway",
    "alignloop",
]
EXTRA_ROOTS = ["benchmarks", "deploy"]
# Sizes in written lines (_written_lines): what `ruff format` wraps stays one line.
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 80
FORBIDDEN = {  # package -> what it must never import, and why
    "gateway": {
        "vllm": "the engine is inference's business",
        "trainer": "data flows gateway -> trainer only",
    },
    "trainer": {"gateway": "data flows gateway -> trainer only", "synthetic": "training is for real data"},
}


def modules() -> dict[str, Path]:
    """Every production module by dotted name."""
    out = {}
    for root in LAYERS + EXTRA_ROOTS:
        for path in (REPO / root).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports(path: Path) -> set[str]:
    """Every module name imported anywhere in a file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def module_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    mods = modules()
    graph = {}
    for name, path in mods.items():
        graph[name] = {m for m in imports(path) if m in mods and m != name}
    return graph


def package_graph() -> dict[str, set[str]]:
    """Top-level package -> the top-level packages it imports."""
    out: dict[str, set[str]] = defaultdict(set)
    for name, deps in module_graph().items():
        for d in deps:
            if d.split(".")[0] != name.split(".")[0]:
                out[name.split(".")[0]].add(d.split(".")[0])
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle in a directed graph, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_forbidden_imports():
    bad = []
    for name, path in modules().items():
        for banned, why in FORBIDDEN.get(name.split(".")[0], {}).items():
            hits = sorted(m for m in imports(path) if m == banned or m.startswith(banned + "."))
            bad += [f"{name} imports {h} ({why})" for h in hits]
    assert not bad, bad


def test_nothing_imports_the_command_line_package():
    users = sorted(
        n
        for n, deps in module_graph().items()
        if not n.startswith("alignloop") and any(d.startswith("alignloop") for d in deps)
    )
    assert not users, users


def test_packages_import_only_lower_layers():
    rank = {p: i for i, p in enumerate(LAYERS)}
    upward = sorted(
        f"{p} -> {d}"
        for p, deps in package_graph().items()
        if p in rank
        for d in deps
        if d in rank and rank[d] > rank[p]
    )
    assert not upward, upward
    assert find_cycle(package_graph()) is None


def test_no_cycle_between_modules():
    assert find_cycle(module_graph()) is None


def _written_lines(text: str) -> list[int]:
    """The numbers of the lines a person wrote: the formatter's wrapping of one expression over
    several lines counts as the one line it is (so sizes do not change with the line length)."""
    own, depth = set(), 0
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        elif tok.type in (tokenize.NEWLINE, tokenize.NL) and depth == 0:
            own.add(tok.start[0])
    return sorted(own)


def _function_lengths(tree: ast.AST, written: list[int]):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first, last = node.lineno, node.end_lineno
            yield node.name, first, bisect.bisect_right(written, last) - bisect.bisect_left(written, first)


def test_modules_and_functions_stay_small():
    too_long = []
    for name, path in modules().items():
        text = path.read_text()
        written = _written_lines(text)
        lines = len(written)
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if lines > MAX_MODULE_LINES and "longer than" not in docstring:
            too_long.append(f"{name}: {lines} lines and no reason in its docstring ('longer than ...')")
        for fn, lineno, length in _function_lengths(ast.parse(text), written):
            if length > MAX_FUNCTION_LINES:
                too_long.append(f"{name}.{fn} (line {lineno}): {length} lines")
    assert not too_long, too_long


if __name__ == "__main__":
    for package in LAYERS + EXTRA_ROOTS:
        print(f"{package:10} -> {', '.join(sorted(package_graph().get(package, ()))) or '(nothing)'}")
