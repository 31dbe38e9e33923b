"""The package's layering, read from its own imports (module level and inside functions).

* no import cycle among ``mtf`` modules;
* production code (``mtf.etl``, ``mtf.rl``, ``mtf.ope``, ``mtf.serving``) never imports the
  simulator: ground truth reaches it through ``mtf.ope.truth.GroundTruth``;
* no code, test, config or doc cites a document outside the repository.
"""
from __future__ import annotations

import ast
import os
import re
from typing import Iterator

import pytest

import mtf

PACKAGE_DIR = os.path.dirname(mtf.__file__)
PRODUCTION = ("mtf.etl", "mtf.rl", "mtf.ope", "mtf.serving")


def _modules() -> dict[str, str]:
    """Module name -> file, every .py under mtf/."""
    out = {}
    for root, _, files in os.walk(PACKAGE_DIR):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = path
    return out


def _imported(name: str, path: str, known: set[str]) -> Iterator[str]:
    """Every mtf module ``name`` imports, anywhere in the file (typing-only imports too)."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            # importing a.b.c runs a/__init__ and a/b/__init__ too
            parts = t.split(".")
            for i in range(1, len(parts) + 1):
                candidate = ".".join(parts[:i])
                if candidate in known and candidate != name and candidate != "mtf":
                    yield candidate


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: set(_imported(name, path, set(mods))) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checks_see_a_cycle_and_a_forbidden_import() -> None:
    """The detectors themselves: a made-up graph with one circle of three."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_mtf_modules() -> None:
    graph = import_graph()
    assert "mtf.contract" in graph and "mtf.loop.closed_loop" in graph
    assert cycles(graph) == []


@pytest.mark.parametrize("package", PRODUCTION)
def test_production_code_does_not_import_the_simulator(package: str) -> None:
    graph = import_graph()
    members = [m for m in graph if m == package or m.startswith(package + ".")]
    assert members, package
    offenders = {m: sorted(t for t in graph[m] if t == "mtf.sim" or t.startswith("mtf.sim."))
                 for m in members}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_the_repository_cites_only_itself() -> None:
    """No code, test, config or doc cites a document outside the repository or an issue."""
    pattern = re.compile(r"paper-spec|design section|design\.md|style\.md|[Ii]ssue #?[0-9]")
    root = os.path.dirname(PACKAGE_DIR)
    paths = [path for path in _modules().values()]
    for folder in ("tests", "benchmarks", "jobs", "docs", "conf", "scripts", "deploy", "docker"):
        for base, _, files in os.walk(os.path.join(root, folder)):
            paths += [os.path.join(base, f) for f in files
                      if f.endswith((".py", ".md", ".yaml", ".sh", ".cfg")) or "Dockerfile" in f]
    paths.append(os.path.join(root, "README.md"))
    me = os.path.abspath(__file__)
    hits = [f"{os.path.relpath(p, root)}:{i}: {line.strip()}"
            for p in paths if os.path.abspath(p) != me
            for i, line in enumerate(open(p, encoding="utf-8"), 1) if pattern.search(line)]
    assert hits == []
