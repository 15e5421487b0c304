"""The layers of ``docs/architecture.md``: each package imports only from the layers below it, and the protocol
package ``certmgr/wpi`` stays pure (no web framework, HTTP client, TLS library, SQL, files or CA calls).

Imports are read with ``ast`` at any depth of a file (lazy imports count); imports under ``TYPE_CHECKING`` do not
(they are annotations, not a dependency at run time).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

#: Top to bottom, as drawn in docs/architecture.md; a module may import its own layer and the layers below.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli", "serve", "api", "console", "scheduling", "phones", "demo", "__main__"),
    ("operations", "renewal"),
    ("deploy",),
    ("issuance", "inventory", "reports"),
    ("runtime",),
    ("audit",),
    ("db", "policy", "notify", "wpi", "pki", "settings", "simulator", "logs"),
    ("identity", "fsutil", "errors", "clock"),
)
LEVEL = {name: depth for depth, names in enumerate(LAYERS) for name in names}

#: What the pure protocol must not touch: third-party I/O and everything of certmgr above the bottom layer.
WPI_FORBIDDEN = ("fastapi", "starlette", "uvicorn", "httpx", "OpenSSL", "sqlalchemy", "sqlmodel", "socket", "ssl")
WPI_ALLOWED_CERTMGR = ("certmgr.wpi", "certmgr.identity", "certmgr.errors", "certmgr.clock")


def _runtime_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of ``path`` outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return found


def _package(module: str) -> str:
    return module.split(".")[1] if module.startswith("certmgr.") else ""


def _files() -> list[Path]:
    return sorted((REPO / "certmgr").rglob("*.py"))


def test_every_package_is_placed_in_a_layer() -> None:
    unplaced = (
        {p.relative_to(REPO / "certmgr").parts[0].removesuffix(".py") for p in _files()} - set(LEVEL) - {"__init__"}
    )
    assert not unplaced, f"add these to LAYERS (and to docs/architecture.md): {sorted(unplaced)}"


def test_imports_point_down_the_layers() -> None:
    upward: list[str] = []
    for path in _files():
        own = path.relative_to(REPO / "certmgr").parts[0].removesuffix(".py")
        if own not in LEVEL:
            continue
        for line, module in _runtime_imports(path):
            target = _package(module)
            if target in LEVEL and LEVEL[target] < LEVEL[own]:
                upward.append(f"{path.relative_to(REPO)}:{line} imports {module} ({own} → {target}, up)")
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("path", sorted((REPO / "certmgr" / "wpi").glob("*.py")), ids=lambda p: p.name)
def test_the_protocol_package_is_pure(path: Path) -> None:
    bad = [
        f"line {line}: {module}"
        for line, module in _runtime_imports(path)
        if module.split(".")[0] in WPI_FORBIDDEN
        or (module.startswith("certmgr") and not module.startswith(WPI_ALLOWED_CERTMGR))
    ]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("open", "Path"):
            bad.append(f"line {node.lineno}: calls {node.func.id}()")
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "read_text", "write_text", "read_bytes"):
            bad.append(f"line {node.lineno}: uses .{node.attr}")
    assert not bad, f"{path.name} is not pure: {bad}"
