"""Progress reports from a running merge (library -> CLI progress bar / log lines / worker job
events), and how both CLIs show them: a bar on a terminal, timestamped plain lines or JSON lines
elsewhere (`--progress auto|bar|plain|json`). No torch.

Stages, in order: load, pseudo_labels, then each merge's own (base_merge, scale_search, select,
mask:<task>, auto, ...) and evaluate, merged (the library is done); `calm-merge run` and the
service's workers then add save and, last, done.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TextIO

ProgressMode = Literal["auto", "bar", "plain", "json"]
PROGRESS_MODES: tuple[str, ...] = ("auto", "bar", "plain", "json")
PROGRESS_HELP = ("how to show progress: a bar (on a terminal), timestamped plain lines, or JSON lines "
                 "(time, stage, fraction, message, metrics); auto: a bar on a terminal, else plain lines")


@dataclass(frozen=True)
class Progress:
    stage: str  # see the module docstring
    fraction: float  # overall progress in [0, 1]
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. loss, mask_density


ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


def no_progress(_: Progress) -> None:
    return None


def never_cancel() -> bool:
    return False


def resolve_mode(mode: str, stream: TextIO) -> Literal["bar", "plain", "json"]:
    """`auto` -> a bar when `stream` is a terminal, plain lines otherwise (log files, pipes)."""
    if mode == "auto":
        isatty = getattr(stream, "isatty", None)
        return "bar" if isatty is not None and isatty() else "plain"
    if mode not in ("bar", "plain", "json"):
        raise ValueError(f"progress mode {mode!r}: use one of {', '.join(PROGRESS_MODES)}")
    return mode  # type: ignore[return-value]


def timestamp(at: datetime | None = None) -> str:
    """ISO 8601 local time with its UTC offset, to the second."""
    return (at or datetime.now()).astimezone().isoformat(timespec="seconds")


def _number(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def format_line(stage: str, fraction: float | None, message: str = "",
                metrics: Mapping[str, Any] | None = None, at: datetime | None = None) -> str:
    """`2025-05-01T12:00:03+02:00  43.0%  mask:cars  epoch 10/100  loss=0.1234`."""
    pct = "      " if fraction is None else f"{100 * fraction:5.1f}%"
    shown = " ".join(f"{k}={_number(v)}" for k, v in (metrics or {}).items())
    return "  ".join(x for x in (timestamp(at), pct, stage, message, shown) if x)


def format_json(stage: str, fraction: float | None, message: str = "",
                metrics: Mapping[str, Any] | None = None, at: datetime | None = None) -> str:
    return json.dumps({"time": timestamp(at), "stage": stage,
                       "fraction": None if fraction is None else round(fraction, 6),
                       "message": message, "metrics": dict(metrics or {})}, default=str, ensure_ascii=False)


class LineProgress:
    """Progress as lines on `stream` (plain or JSON), never `\\r` frames. One line when the stage
    changes, at the end (fraction 1) and otherwise at most every `min_interval_s`; fractions
    shown never go back."""

    def __init__(self, stream: TextIO, json_lines: bool = False, min_interval_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.json_lines = stream, json_lines
        self.min_interval_s, self.clock = min_interval_s, clock
        self._stage: str | None = None
        self._last = float("-inf")
        self.fraction = 0.0

    def __call__(self, p: Progress) -> None:
        self.line(p.stage, p.fraction, p.message, p.metrics)

    def line(self, stage: str, fraction: float | None, message: str = "",
             metrics: Mapping[str, Any] | None = None, at: datetime | None = None,
             force: bool = False) -> None:
        now = self.clock()
        if fraction is not None:
            fraction = self.fraction = max(self.fraction, min(max(float(fraction), 0.0), 1.0))
        due = force or stage != self._stage or fraction == 1.0 or now - self._last >= self.min_interval_s
        if not due:
            return
        self._stage, self._last = stage, now
        fmt = format_json if self.json_lines else format_line
        self.stream.write(fmt(stage, fraction, message, metrics, at) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()
