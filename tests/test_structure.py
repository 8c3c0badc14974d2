"""The package's shape stays as DESIGN.md draws it: no import cycle among bitconv's modules (lazy,
function-level imports included: they are cycles all the same, only deferred), the layers go one
way, and every module is small enough to read in one sitting."""
from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "bitconv"
MAX_LINES = 500

#: what each layer may not import (DESIGN.md: cli → api/batch → convert, formats, validate → quant → accel)
FORBIDDEN = {
    "bitconv.validate": ("bitconv.api", "bitconv.cli", "bitconv.batch"),
    "bitconv.inspectors": ("bitconv.api", "bitconv.cli", "bitconv.batch", "bitconv.validate"),
    "bitconv.formats": ("bitconv.api", "bitconv.cli", "bitconv.batch", "bitconv.validate", "bitconv.inspectors"),
    "bitconv.convert": ("bitconv.api", "bitconv.cli", "bitconv.batch", "bitconv.validate", "bitconv.inspectors",
                        "bitconv.formats"),
    "bitconv.quant": ("bitconv.api", "bitconv.cli", "bitconv.batch", "bitconv.validate", "bitconv.inspectors",
                      "bitconv.formats", "bitconv.convert"),
    "bitconv.accel": ("bitconv.api", "bitconv.cli", "bitconv.batch", "bitconv.validate", "bitconv.inspectors",
                      "bitconv.formats", "bitconv.convert", "bitconv.quant"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The bitconv modules `name` imports anywhere in its body (not under `if TYPE_CHECKING`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and not _type_checking_only(node, parents):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and not _type_checking_only(node, parents):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in modules:
                    out.add(sub)
                elif target in modules:
                    out.add(target)
    out.discard(name)
    return out


@functools.lru_cache(maxsize=1)
def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_import_cycle() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles among bitconv modules:\n" + "\n".join(" ↔ ".join(c) for c in found)


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_go_one_way(layer: str) -> None:
    graph = import_graph()
    bad = sorted(f"{m} imports {t}" for m, targets in graph.items() if m == layer or m.startswith(layer + ".")
                 for t in targets for f in FORBIDDEN[layer] if t == f or t.startswith(f + "."))
    assert not bad, "\n".join(bad)


def test_modules_are_small() -> None:
    big = {name: n for name, p in all_modules().items()
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"
