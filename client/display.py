"""What people see: a tqdm bar on a terminal (byte counters for transfers, 0-100 % fed by job
events), timestamped plain or JSON lines elsewhere (calm.progress), and the report endpoint's
evaluation table as plain text (tasks x model kinds, in %)."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any, Protocol

from tqdm import tqdm

from calm.progress import LineProgress


class Bar(Protocol):
    def advance(self, n: float) -> None: ...
    def event(self, event: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def make_bar(total: float, desc: str, unit: str = "B", mode: str = "bar") -> Bar:
    """A ProgressBar (`mode` "bar") or LineBar ("plain", "json")."""
    if mode == "bar":
        return ProgressBar(total, desc, unit)
    return LineBar(total, desc, unit, json_lines=mode == "json")


class ProgressBar:
    def __init__(self, total: float, desc: str, unit: str = "B") -> None:
        scale = unit == "B"
        self.bar = tqdm(
            total=total, desc=desc, unit=unit, unit_scale=scale, unit_divisor=1024 if scale else 1000,
            file=sys.stderr, dynamic_ncols=True, leave=True,
            bar_format=None if scale else "{l_bar}{bar}| {elapsed}{postfix}",
        )  # fmt: skip

    def advance(self, n: float) -> None:
        self.bar.update(n)

    def event(self, event: dict[str, Any]) -> None:
        """A job event: move to its fraction, show its stage, message and metrics."""
        fraction = event.get("fraction")
        if fraction is not None:
            target = round(100 * float(fraction), 1)
            self.bar.update(max(0.0, target - self.bar.n))
        stage = event.get("stage") or ""
        metrics = event.get("metrics") or {}
        shown = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in list(metrics.items())[:3])  # fmt: skip
        message = (event.get("message") or "")[:60]
        self.bar.set_postfix_str(f"[{stage}] {message} {shown}".strip(), refresh=True)

    def close(self) -> None:
        self.bar.close()


class LineBar:
    """The same reports as lines on stderr: a transfer's start, progress (throttled) and end;
    each job event with its own time, stage, fraction, message and metrics."""

    def __init__(self, total: float, desc: str, unit: str = "B", json_lines: bool = False) -> None:
        self.total, self.desc, self.unit, self.done = total, desc, unit, 0.0
        self.lines = LineProgress(sys.stderr, json_lines=json_lines)
        if unit == "B":
            self._bytes(force=True)

    def _bytes(self, force: bool = False) -> None:
        fraction = self.done / self.total if self.total else 1.0
        self.lines.line(self.desc.split(" ")[0], fraction, f"{self.desc} {_size(self.done)} of "
                        f"{_size(self.total)}", {"bytes": int(self.done)}, force=force)

    def advance(self, n: float) -> None:
        self.done += n
        self._bytes()

    def event(self, event: dict[str, Any]) -> None:
        when = _time(event.get("created_at"))
        message = event.get("message") or ""
        if event.get("level") not in (None, "info"):
            message = f"{event['level']}: {message}"
        self.lines.line(event.get("stage") or "", event.get("fraction"), message,
                        event.get("metrics") or {}, at=when, force=event.get("level") not in (None, "info"))

    def close(self) -> None:
        if self.unit == "B" and self.done and self.lines.fraction < 1.0:
            self._bytes(force=True)
        self.lines.close()


def _time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"

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
