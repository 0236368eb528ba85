"""The layers point one way: schemas ← the bus runtime (``streams/``) ← the stages
(``agents/``) ← the product's commands (``streams/commands/``). Each folder is one node (a
package's own files; each sub-package is a node of its own); every import counts, those inside
functions too."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "streams", "agents")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module this file imports, at any depth, relative imports resolved."""
    mod, out = _module(path), set()
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return {m for m in out if m.split(".")[0] in PACKAGES}


def _folders() -> set[str]:
    return {_module(p.parent / "__init__.py") if (p.parent / "__init__.py").exists() else ".".join(
        p.parent.relative_to(ROOT).parts) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def node_of(module: str, folders: set[str]) -> str:
    """The folder a module lives in (a module that is itself a package is its own folder)."""
    if module in folders:
        return module
    parent = module.rpartition(".")[0]
    while parent and parent not in folders:
        parent = parent.rpartition(".")[0]
    return parent or module


def graph() -> dict[str, set[str]]:
    folders = _folders()
    edges: dict[str, set[str]] = {f: set() for f in folders}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            here = node_of(_module(path), folders)
            for imported in _imports(path):
                there = node_of(imported, folders)
                if there != here:
                    edges[here].add(there)
    return edges


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle, as the nodes on it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_walk_sees_imports_inside_functions_and_relative_ones():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert cycle(edges) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
    # a real import made inside a function: the worker binds the pipeline the commands hand it
    assert "agents" in graph()["streams.commands"]


def test_the_folders_import_each_other_without_a_cycle():
    edges = graph()
    assert {"schemas", "streams", "agents", "streams.commands", "agents.evaluators", "agents.backends"} <= set(edges)
    assert cycle(edges) is None, f"import cycle between folders: {' → '.join(cycle(edges))}"


def test_the_runtime_imports_no_stage_and_no_command():
    edges = graph()
    runtime_up = {n for n in edges["streams"] if n.startswith(("agents", "streams.commands"))}
    assert runtime_up == set(), f"streams/ (the bus runtime) imports {sorted(runtime_up)}"
    assert all(not n.startswith("streams.commands") for a in edges if a.startswith("agents") for n in edges[a])
    assert edges["schemas"] == set()
