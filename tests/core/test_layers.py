"""The dependency rule (DESIGN.md §2): the shared layer imports neither the worker, the client,
the API nor the launcher; the library imports none of them either."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"core": {"worker", "client", "api", "service"},
             "calm": {"core", "worker", "client", "api", "service"}}


def imported_packages(package: str) -> dict[str, set[str]]:
    """module path -> top-level packages it imports (anywhere in the file, lazily too)."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        tops = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                tops.add(node.module.split(".")[0])
        out[str(path.relative_to(ROOT))] = tops
    return out


def test_core_and_calm_import_nothing_above_them() -> None:
    for package, forbidden in FORBIDDEN.items():
        bad = {m: sorted(t & forbidden) for m, t in imported_packages(package).items() if t & forbidden}
        assert not bad, f"{package}/ must not import {sorted(forbidden)}: {bad}"
