"""What is installed on an appliance (firmware/, hal/, board/) never imports host tools,
and nothing calls upward (ARCHITECTURE.md's layers): hal/ and board/ do not import
firmware/. Imports inside functions count too: they are what made tools/ an invisible
dependency of the appliance before."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# package → top-level packages it must not import
FORBIDDEN = {
    "firmware": {"tools", "tests"},
    "hal": {"tools", "tests", "firmware"},
    "board": {"tools", "tests", "firmware", "hal"},
}


def imported_packages(path: Path) -> set[tuple[int, str]]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {(node.lineno, alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.lineno, node.module))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_the_installed_layers_import_nothing_above_them(package):
    offences = []
    for path in sorted((REPO / package).rglob("*.py")):
        for line, module in imported_packages(path):
            if module.split(".")[0] in FORBIDDEN[package]:
                offences.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not offences, "\n".join(offences)


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from tools.sim import media\n    import tools.rig\n")
    assert {m for _, m in imported_packages(source)} == {"tools.sim", "tools.rig"}
