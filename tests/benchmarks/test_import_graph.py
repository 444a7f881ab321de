"""No two modules of edgerec.benchmarks import each other, directly or round a loop; imports inside
functions count. The `edgerec bench` command module holds no benchmark logic."""
import ast
from pathlib import Path

import edgerec.benchmarks

PACKAGE = "edgerec.benchmarks"


def import_graph(folder: Path, package: str) -> dict[str, set[str]]:
    """``{module: modules of the same package it imports}``, every import statement included."""
    modules = {f"{package}.{p.stem}": p for p in folder.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([package] + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_benchmarks_have_no_import_cycle():
    graph = import_graph(Path(edgerec.benchmarks.__path__[0]), PACKAGE)
    assert f"{PACKAGE}.report" in graph and f"{PACKAGE}.tables" in graph[f"{PACKAGE}.loadtest"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_walker_sees_function_level_cycles(tmp_path):
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import g\n")
    (tmp_path / "c.py").write_text("import pkg.a\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]


def test_bench_command_is_thin():
    import edgerec.sdk.cli.bench as command

    source = Path(command.__file__).read_text("utf-8")
    tree = ast.parse(source)
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert functions == {"_int_list", "configure", "run"}
    first, rest = command.__doc__.strip().split("\n", 1)
    assert first.startswith("Benchmark a bundle") and "Examples:" in rest
    assert "run_bench(" in source and source.count("run_bench(") == 1    # one library call
    assert not (Path(edgerec.benchmarks.__path__[0]) / "commands.py").exists()
