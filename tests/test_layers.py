"""Layers the right way up: no import cycles between longreach's modules, and no module imports a layer
above its own (``kv/`` never imports ``bench/``, nothing below the front ends imports ``cli``).

The import graph is read from the source with ``ast`` (no module is executed), so the test also sees
imports inside functions, which hide cycles from Python but not from a reader of the code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import longreach

ROOT = Path(longreach.__file__).parent

#: Layer of each top-level part, lowest first; a module may import its own layer or lower ones.
LAYERS = [
    {"errors", "units", "registry"},
    {"textio", "prompt", "memory", "models", "corpus", "qk", "answers", "context"},
    {"spec", "kv", "engine", "readers", "retrieval", "rotary", "sampling", "prefix_cache"},
    {"methods"},
    {"bench", "route"},
    {"ask"},
    {"cli", "serve", "demo", "__main__"},
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path, everywhere: bool) -> set[str]:
    """longreach modules imported by ``path``: at module level only, or anywhere (functions too)."""
    tree = ast.parse(path.read_text())
    current, is_package = _module_name(path), path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # annotations only, never executed
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import) and (top or everywhere):
                found.update(a.name for a in child.names if a.name.startswith("longreach"))
            elif isinstance(child, ast.ImportFrom) and (top or everywhere):
                mod = _resolve(current, is_package, child)
                if mod.startswith("longreach"):
                    for a in child.names:  # `from . import methods` imports a module, not a name
                        sub = f"{mod}.{a.name}"
                        found.add(sub if _exists(sub) else mod)
            visit(child, inner)

    visit(tree, True)
    found.discard(current)
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (ROOT / rel).with_suffix(".py").exists() or (ROOT / rel / "__init__.py").exists()


def _sources() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(module: str) -> int | None:
    part = _part(module)
    return next((i for i, layer in enumerate(LAYERS) if part in layer), None)


def test_every_part_has_a_layer():
    parts = {_part(_module_name(p)) for p in _sources()} - {"__init__"}
    assert parts <= set().union(*LAYERS), f"add these to LAYERS: {sorted(parts - set().union(*LAYERS))}"


def test_no_import_cycles_at_module_level():
    graph = {_module_name(p): _imports(p, everywhere=False) for p in _sources()}
    # a module's import runs its package's __init__ first: an edge to a package's module is one to the package too
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt in graph and state.get(nxt) is None:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if state.get(node) is None:
            dfs(node)


def test_no_module_imports_a_layer_above_its_own():
    bad = []
    for path in _sources():
        module = _module_name(path)
        mine = _layer(module)
        if mine is None:  # the package's own __init__ re-exports the public API
            continue
        for target in _imports(path, everywhere=True):
            theirs = _layer(target)
            if theirs is not None and theirs > mine:
                bad.append(f"{module} imports {target}")
    assert not bad, "imports pointing up the layers: " + "; ".join(sorted(bad))
