"""Progress reports from a running merge (library -> CLI progress bar / worker job events)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Progress:
    stage: str  # "load", "pseudo_labels", "base_merge", "select", "mask:<task>", "evaluate", "save"
    fraction: float  # overall progress in [0, 1]
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. loss, mask_density


ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


def no_progress(_: Progress) -> None:
    return None


def never_cancel() -> bool:
    return False
