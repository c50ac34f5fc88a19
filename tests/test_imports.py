"""No import cycles inside vqtok: walk every module's imports (ast) and look for a cycle.

Every import counts: module level, inside functions (deferred) and under ``if TYPE_CHECKING:``, because
each says "this module needs that one"; a cycle means two modules cannot be understood, tested or
moved apart. Importing ``a.b.c`` also runs the packages ``a.b`` and ``a``, so an import from outside a
package adds an edge to the package's ``__init__`` too.
"""

from __future__ import annotations

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1] / "vqtok"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the vqtok modules it imports (any import statement anywhere in the file)."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative import
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                # ``from pkg import sub`` imports the submodule pkg.sub
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
            for target in targets:
                while target and target not in modules:  # ``import vqtok.x.y`` of a non-module name
                    target = target.rpartition(".")[0]
                if not target.startswith("vqtok"):
                    continue
                # the packages above the target run too, unless this module is inside them
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    pkg = ".".join(parts[:i])
                    if pkg in modules and pkg != name and not (name + ".").startswith(pkg + "."):
                        graph[name].add(pkg)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walker_finds_a_cycle_and_reads_package_imports() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    assert "vqtok.hub" in graph["vqtok.tokenizer"]  # ``from vqtok import hub``
    assert "vqtok.tars" in graph["vqtok.metrics.evaluate"]
    assert "vqtok.tokenizer" in graph["vqtok.pipeline.driver"]  # a deferred import counts


# Deferred imports kept on purpose as the only way back into a lower layer: none. (The tokenizer reaches
# the converters through hooks they register: register_layout_resolver, register_exporter.)
ALLOWED_DEFERRED: set[tuple[str, str]] = set()


def _graph() -> dict[str, set[str]]:
    graph = import_graph()
    for src, dst in ALLOWED_DEFERRED:
        assert dst in graph[src], f"{src} no longer imports {dst}: remove it from ALLOWED_DEFERRED"
        graph[src] = {d for d in graph[src] if d != dst and not d.startswith(dst + ".")}
    return graph


def test_no_import_cycles() -> None:
    assert find_cycles(_graph()) == []
