"""No two edgerec modules import each other, directly or through others.

The graph is read from the source (ast), so imports inside functions count too: a lazy import
hides a cycle from Python's import machinery, not from the design. An edge goes to the module a
statement names (``from pkg import sub`` -> ``pkg.sub`` when ``sub`` is a module, else ``pkg``);
the implicit import of parent packages is not an edge (every submodule would otherwise form a
cycle with its own ``__init__``).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"sdk": "edgerec.sdk", "converters": "edgerec.converters", "runtime": "edgerec.runtime",
            "benchmarks": "edgerec.benchmarks"}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, dotted in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([dotted, *parts])] = path
    return found


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    package = _package_of(name, path)
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                targets.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                targets.add(sub if sub in modules else source)
    return {t for t in targets if t in modules and t != name}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(graph) == [["a", "b", "c"]]


def test_relative_and_absolute_imports_resolve_to_edgerec_modules():
    graph = import_graph()
    assert "edgerec.runtime.contract" in graph["edgerec.runtime.manifest"]
    assert "edgerec.runtime.errors" in graph["edgerec.runtime.contract"]


@pytest.mark.parametrize("package", sorted(PACKAGES.values()) + ["edgerec (across packages)"])
def test_no_import_cycles(package):
    graph = import_graph()
    if package.startswith("edgerec."):
        graph = {n: {t for t in ts if t.startswith(package)} for n, ts in graph.items() if n.startswith(package)}
    cycles = find_cycles(graph)
    assert cycles == [], "modules that import each other: " + "; ".join(" <-> ".join(c) for c in cycles)


# What each package may import besides itself: sdk -> converters -> runtime; benchmarks -> runtime
# (+ converters and sdk lazily, for the Keras baselines and the demo).
ALLOWED = {
    "edgerec.runtime": set(),
    "edgerec.converters": {"edgerec.runtime"},
    "edgerec.sdk": {"edgerec.converters", "edgerec.runtime", "edgerec.benchmarks"},
    "edgerec.benchmarks": {"edgerec.runtime", "edgerec.converters", "edgerec.sdk"},
}


def test_dependency_direction():
    wrong = []
    for name, targets in import_graph().items():
        home = next(p for p in ALLOWED if name == p or name.startswith(p + "."))
        for target in targets:
            other = next(p for p in ALLOWED if target == p or target.startswith(p + "."))
            if other != home and other not in ALLOWED[home]:
                wrong.append(f"{name} -> {target}")
    assert wrong == [], "imports against the dependency direction: " + "; ".join(sorted(wrong))
