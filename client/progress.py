"""A small tqdm wrapper: byte counters for transfers, a 0-100 % bar fed by job events."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


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
