"""The house rules, read from the source: imports flow one way, modules stay small enough to hold in your head.

    server -> skills -> selfmcp.* -> {db, embeddings, executor}

Nothing imports server; db and executor import no project module (the sandbox, selfmcp.confine, is
plugged into executor's Runner, not imported by it); embeddings imports only its own embedder
implementations (selfmcp.embedders); no selfmcp module imports skills or server.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

TOP = ("server", "skills", "db", "embeddings", "executor")
LIMITS = {"server": 400, "skills": 400}
DEFAULT_LIMIT = 620  # "about 600"


def project_modules() -> dict[str, Path]:
    modules = {name: ROOT / f"{name}.py" for name in TOP}
    for path in sorted((ROOT / "selfmcp").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = project_modules()


def imports_of(path: Path) -> set[str]:
    """Project modules `path` imports (at any depth of the file: lazy imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {n for n in names if n in MODULES}
    return found


GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def test_the_layout_is_what_the_rules_speak_of():
    assert set(TOP) <= set(MODULES) and "selfmcp.store" in MODULES and "selfmcp.remote.oauth" in MODULES


def test_nothing_imports_server():
    assert [m for m, deps in GRAPH.items() if "server" in deps] == []


@pytest.mark.parametrize("leaf", ["db", "executor", "selfmcp.landlock"])
def test_leaves_import_no_project_module(leaf):
    assert GRAPH[leaf] == set()


def test_embeddings_imports_only_its_embedder_implementations():
    assert all(dep.startswith("selfmcp.embedders") for dep in GRAPH["embeddings"]), GRAPH["embeddings"]


def test_the_package_never_imports_the_layers_above_it():
    for module, deps in GRAPH.items():
        if module.startswith("selfmcp"):
            assert not deps & {"server", "skills"}, (module, deps)


def test_skills_is_imported_only_by_server():
    assert sorted(m for m, deps in GRAPH.items() if "skills" in deps) == ["server"]


def test_the_import_graph_is_acyclic():
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in GRAPH[node]:
            assert state.get(dep) != 1, " -> ".join([*path, node, dep])
            if dep not in state:
                visit(dep, [*path, node])
        state[node] = 2

    for module in GRAPH:
        if module not in state:
            visit(module, [])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= LIMITS.get(module, DEFAULT_LIMIT), f"{module} has {lines} lines"
