"""The import graph of `kdbench/` and `distillers/`, built from the source (AST), not from what a
process happens to have loaded: no circles, and no import inside a function except a deferred heavy
or optional dependency that says why in a comment on its line."""

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kdbench", "distillers")
DEFERRED = "# deferred:"          # the comment a function-level import must carry, with its reason


def modules(root: Path = ROOT) -> Dict[str, Path]:
    """Dotted module name -> file, for every module of the packages (a package is its __init__)."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported(module: str, node: ast.AST, known: Dict[str, Path]) -> Set[str]:
    """The project modules an import statement in `module` executes: the module named, or the
    submodule a `from` import names, and the packages above them, except `module`'s own ancestors
    (already running when it is imported)."""
    is_package = known[module].name == "__init__.py"
    here = module if is_package else module.rpartition(".")[0]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            up = here.split(".")[:len(here.split(".")) - (node.level - 1)]
            base = ".".join(up + ([node.module] if node.module else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    else:
        names = [a.name for a in node.names]
    ancestors = {".".join(module.split(".")[:k]) for k in range(1, module.count(".") + 1)}
    out = set()
    for name in names:
        parts = name.split(".")
        out.update(p for p in (".".join(parts[:k]) for k in range(1, len(parts) + 1)) if p in known)
    return out - ancestors - {module}


def graph(root: Path = ROOT) -> Tuple[Dict[str, Set[str]], List[Tuple[str, int, str]]]:
    """(module -> the project modules it imports, [(module, line, source) of each function-level import])."""
    known = modules(root)
    edges, inner = {m: set() for m in known}, []
    for module, path in known.items():
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text)
        in_functions = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                        for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges[module] |= imported(module, node, known)
                if id(node) in in_functions:
                    inner.append((module, node.lineno, lines[node.lineno - 1].strip()))
    return edges, inner


def circles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan), or with a self-loop."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
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
            if len(comp) > 1 or v in edges[v]:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    edges, _ = graph()
    assert len(edges) > 80 and "kdbench.results" in edges and "distillers.pat" in edges
    assert circles(edges) == []


def test_function_level_imports_are_deferred_on_purpose():
    _, inner = graph()
    unexplained = [f"{m}:{line}: {src}" for m, line, src in inner if DEFERRED not in src]
    assert unexplained == []
    project = [f"{m}:{line}: {src}" for m, line, src in inner
               if src.startswith(("from .", "from kdbench", "from distillers", "import kdbench"))]
    assert project == ["kdbench.launch:64: from .cli import main as cli_main      # deferred: the CLI loads torch, "
                       "which must follow the re-exec"]


def test_the_record_contract_does_not_depend_on_the_entry_point():
    edges, _ = graph()
    below = {"kdbench.results", "kdbench.process"}
    reach, todo = set(), list(below)
    while todo:
        for w in edges[todo.pop()] - reach:
            reach.add(w)
            todo.append(w)
    assert not reach & {"kdbench.launch", "kdbench.cli", "kdbench.leaderboard", "kdbench.engine"}


def test_the_checker_finds_a_circle_and_an_unexplained_import(tmp_path):
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "kdbench" / "a.py").write_text("from .b import x\n")
    (tmp_path / "kdbench" / "b.py").write_text("def f():\n    from kdbench.a import y\n    return y\nx = 1\n")
    (tmp_path / "distillers" / "c.py").write_text("from . import d\n")
    (tmp_path / "distillers" / "d.py").write_text("import json\n")
    edges, inner = graph(tmp_path)
    assert circles(edges) == [["kdbench.a", "kdbench.b"]]
    assert inner == [("kdbench.b", 2, "from kdbench.a import y")]
    assert edges["distillers.c"] == {"distillers.d"} and edges["distillers.d"] == set()


def test_the_leaderboard_package_imports_one_way():
    """records -> table -> statistics -> findings -> renderers -> publish -> command: no module imports
    one later on that line (stats and across are the table's pure computations)."""
    edges, _ = graph()
    order = ["stats", "across", "table", "findings", "render", "plots", "html", "publish", "command"]
    rank = {f"kdbench.leaderboard.{m}": i for i, m in enumerate(order)}
    backwards = [(a, b) for a in rank for b in edges[a] if b in rank and rank[b] >= rank[a]]
    assert backwards == [] and set(rank) <= set(edges)
