"""The package's import graph: no circle (every import counts, also one inside a function), and
the leaf modules every component may use import nothing of mmsent."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "mmsent"
LEAVES = ("mmsent.checks", "mmsent.files", "mmsent.interrupt")


def modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        name = ".".join(p.relative_to(PKG.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()

    def owner(name: str) -> str:  # the module a dotted name lives in (mmsent.data.DATASETS -> mmsent.data)
        while name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph = {m: set() for m in mods}
    for m, path in mods.items():
        package = m if path.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            graph[m] |= {owner(t) for t in targets if t.split(".")[0] == "mmsent"} - {m}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_in_the_package():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_circle():
    """The check above can fail: a hand-made graph with a circle through three modules."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_leaf_modules_import_nothing_of_mmsent():
    graph = import_graph()
    assert {m: graph[m] for m in LEAVES} == {m: set() for m in LEAVES}
    assert "mmsent.config" not in set().union(*(graph[m] for m in graph if m.startswith(("mmsent.strategies.",
                                                                                         "mmsent.models.", "mmsent.data."))))
