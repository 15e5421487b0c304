"""The API's layout: route modules import the dependency module, never the application, and the modules of
``certmgr.api`` (and ``certmgr.console``) form no import cycle. The operator use cases are called, not repeated:
every command of ``certmgr/cli/actions.py`` (device register/approve/decommission/renew, certificate
revoke/renew, deployment retry/cancel) goes through :mod:`certmgr.operations` and touches no lower layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("certmgr/api", "certmgr/console")


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every ``certmgr.*`` module ``path`` imports, at any depth of the file (lazy imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("certmgr"):
            found.add(node.module)
            for alias in node.names:
                found.add(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("certmgr"))
    return found


def _graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]
    modules = {_module_name(p): p for p in files}
    return {name: {i for i in _imports(path) if i in modules and i != name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_route_modules_never_import_the_app() -> None:
    offenders = [
        str(path.relative_to(REPO))
        for path in sorted((REPO / "certmgr/api").rglob("*.py"))
        if path.name != "app.py" and any(i.startswith("certmgr.api.app") for i in _imports(path))
    ]
    assert offenders == []


def test_api_and_console_modules_form_no_import_cycle() -> None:
    graph = _graph()
    assert "certmgr.api.deps" in graph
    assert _cycle(graph) is None


def test_the_cycle_check_finds_a_cycle() -> None:
    """The check above can fail: a planted cycle is found."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


ACTIONS = REPO / "certmgr/cli/actions.py"
#: What a command of the CLI's actions may import: the use cases, and what every command needs to run them.
ALLOWED = {"certmgr.operations"}  # the runtime comes from the module's one _runtime() helper


def _commands() -> list[ast.FunctionDef]:
    tree = ast.parse(ACTIONS.read_text())
    return [n for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")]


def test_every_operator_use_case_has_a_cli_command() -> None:
    names = {f.name for f in _commands()}
    assert names == {
        "device_register",
        "device_approve",
        "device_decommission",
        "device_renew",
        "certificate_revoke",
        "certificate_renew",
        "deployment_retry",
        "deployment_cancel",
    }


@pytest.mark.parametrize("command", [f.name for f in _commands()])
def test_cli_calls_the_operations(command: str) -> None:
    func = next(f for f in _commands() if f.name == command)
    imported = {node.module for node in ast.walk(func) if isinstance(node, ast.ImportFrom) and node.module is not None}
    assert "certmgr.operations" in imported
    assert imported <= ALLOWED, imported - ALLOWED
    module_imports = {
        node.module for node in ast.parse(ACTIONS.read_text()).body if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not {m for m in module_imports if m.startswith(("certmgr.db", "certmgr.inventory", "certmgr.deploy"))}
