"""The layout tells the truth: no import cycle between our modules, short functions, and a repository that
explains itself (no pointers to documents outside it)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"vqkit": "vqkit", "plugins": "vqkit.plugins", "exporters": "vqkit.exporters"}
MAX_LINES = 80
# Functions allowed to be longer, each with its reason.
LONG_ON_PURPOSE: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def test_no_import_cycle_between_our_modules() -> None:
    known = _modules()
    graph = {name: _imports(name, path, known) for name, path in known.items()}
    # Depth-first search for a back edge; imports inside functions count too.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_functions_are_short() -> None:
    long = []
    for folder in ("vqkit", "plugins", "exporters"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                    where = f"{path.relative_to(ROOT)}:{node.name}"
                    if lines > MAX_LINES and where not in LONG_ON_PURPOSE:
                        long.append(f"{where} ({lines} lines)")
    assert not long, long


def test_the_repository_points_at_nothing_outside_it() -> None:
    # (spelled in pieces so that this file does not match itself)
    words = ["DESIGN" + r"\.md", "the " + "seed's", "seed " + "tutorial", "[Ii]ssue" + r" #?\d+"]
    pattern = re.compile("|".join(words))
    hits = []
    for folder in ("vqkit", "plugins", "exporters", "tests", "benchmarks", "examples", "runtime"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".md", ".toml", ".js", ".html") and "node_modules" not in path.parts:
                for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                    if pattern.search(line):
                        hits.append(f"{path.relative_to(ROOT)}:{number}")
    for name in ("README.md", "ARCHITECTURE.md"):
        text = (ROOT / name).read_text()
        hits += [f"{name}:{n}" for n, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    assert not hits, hits


def test_the_core_imports_no_built_in_plugin() -> None:
    """The core names no concrete component: built-ins are reached through the registries, as a third party's."""
    known = _modules()
    core = {
        name: path
        for name, path in known.items()
        if not name.startswith(("vqkit.plugins", "vqkit.exporters"))
    }
    bad = {
        name: sorted(
            t for t in _imports(name, path, known) if t.startswith(("vqkit.plugins", "vqkit.exporters"))
        )
        for name, path in core.items()
    }
    assert not {k: v for k, v in bad.items() if v}, bad
