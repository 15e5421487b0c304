"""An effect type nobody handles is a type-checking error, not a silent no-op.

:func:`certmgr.deploy.effects.apply_effects` dispatches every :data:`certmgr.wpi.effects.Effect` through one
``match`` that ends in ``assert_never``. For each effect type, a copy of the module with that type's ``case``
removed must fail ``mypy --strict`` naming the forgotten type (one mypy run checks all the copies).
"""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from pathlib import Path

from certmgr.wpi.effects import Effect
from tests.conftest import REPO

SOURCE = REPO / "certmgr" / "deploy" / "effects.py"


def _without_case(source: str, name: str) -> str:
    pattern = re.compile(rf"^        case {name}\(\):\n(?:            .*\n)+", re.MULTILINE)
    mutated, count = pattern.subn("", source)
    assert count == 1, f"no single `case {name}():` arm in {SOURCE.name}"
    return mutated


def test_every_effect_type_has_a_handler_checked_by_mypy(tmp_path: Path) -> None:
    names = [t.__name__ for t in typing.get_args(Effect)]
    assert len(names) >= 9
    source = SOURCE.read_text()
    files = []
    for name in names:
        path = tmp_path / f"effects_without_{name.lower()}.py"
        path.write_text(_without_case(source, name))
        files.append(path)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-error-summary", *map(str, files)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    for name, path in zip(names, files, strict=True):
        expected = f'{path.name}:.*Argument 1 to "assert_never" has incompatible type "{name}"'
        assert re.search(expected, result.stdout), f"removing `case {name}()` was not caught:\n{result.stdout}"
