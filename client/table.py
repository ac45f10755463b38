"""The report endpoint's evaluation table as plain text (tasks x model kinds, in %)."""

from __future__ import annotations

from typing import Any

KIND_ORDER = ("zero_shot", "individual", "merged")


def _kinds(table: dict[str, dict[str, float]]) -> list[str]:
    first = [k for k in KIND_ORDER if k in table]
    return first + sorted(k for k in table if k not in KIND_ORDER)


def report_table(report: dict[str, Any]) -> str:
    """`report` is GET /v1/merges/{id}/report: its "table" is kind -> task -> accuracy."""
    table: dict[str, dict[str, float]] = report.get("table") or {}
    if not table:
        return f"{report.get('job_id', '')}: no evaluation (give tasks an eval file)"
    kinds = _kinds(table)
    tasks = sorted({t for per in table.values() for t in per if t != "average"})
    width = max([len("task"), len("average"), *map(len, tasks)])
    cols = [max(len(k), 6) for k in kinds]
    header = (k.rjust(c) for k, c in zip(kinds, cols, strict=True))
    lines = ["  ".join(["task".ljust(width), *header])]
    lines.append("-" * len(lines[0]))
    for task in [*tasks, "average"]:
        if task == "average":
            lines.append("-" * len(lines[0]))
        cells = []
        for kind, c in zip(kinds, cols, strict=True):
            acc = table[kind].get(task)
            cells.append(("-" if acc is None else f"{100 * acc:.1f}").rjust(c))
        lines.append("  ".join([task.ljust(width), *cells]))
    return "\n".join(lines)
