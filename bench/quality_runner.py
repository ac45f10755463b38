"""Runs merge methods on one loaded suite and records, per method, TEST accuracy per task (for
the table only), held-out pseudo-label agreement (what the library selects by), info and time."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from calm.evaluate import summarize
from calm.loading import Loaded
from calm.methods import MethodOutput, method_function
from calm.registry import parse_options
from calm.task_vectors import add


def jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: str(o)))


class Runner:
    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded
        self.results: dict[str, dict[str, Any]] = {}
        for kind in ("zero_shot", "individual"):
            self.results[kind] = {"per_task": loaded.accuracy[kind], "time_s": 0.0, "info": {}}

    def add(self, label: str, fn: Callable[[], MethodOutput]) -> MethodOutput:
        ctx = self.loaded.ctx
        start = time.perf_counter()
        out = fn()
        elapsed = time.perf_counter() - start
        theta = add(ctx.theta0, out.tau)
        buffers = ctx.merged_buffers(theta)
        acc = ctx.test_accuracy(theta, buffers)
        agree = ctx.agreement_of(theta, buffers=buffers)
        assert acc is not None, "benchmark suites have labelled test splits"
        self.results[label] = {
            "per_task": acc, "time_s": round(elapsed, 2), "info": jsonable(out.info),
            "heldout_agreement": sum(agree.values()) / len(agree),
        }
        print(f"  {label:<34} avg {100 * sum(acc.values()) / len(acc):5.1f}  held-out "
              f"{self.results[label]['heldout_agreement']:.3f}  ({elapsed:6.1f}s)", flush=True)
        return out

    def method(self, label: str, name: str, options: dict[str, Any]) -> MethodOutput:
        opts = parse_options(name, options)
        return self.add(label, lambda: method_function(name)(self.loaded.ctx, opts))

    def finish(self) -> None:
        """Adds 'average' and 'normalized' (mean over tasks of acc / individual acc)."""
        summary = summarize({label: r["per_task"] for label, r in self.results.items()})
        for label, r in self.results.items():
            r["average"] = summary["average"][label]
            r["normalized"] = summary["normalized"].get(label)


def table(results: dict[str, dict[str, Any]], tasks: list[str]) -> str:
    short = [t[:10] for t in tasks]
    head = (f"{'method':<34}" + "".join(f"{s:>11}" for s in short)
            + f"{'avg':>7}{'norm':>7}{'held-out':>9}{'time':>8}")
    lines = [head, "-" * len(head)]
    for label, r in results.items():
        cells = "".join(f"{100 * r['per_task'][t]:11.1f}" for t in tasks)
        norm = f"{r['normalized']:7.3f}" if r.get("normalized") is not None else f"{'':>7}"
        agree = f"{r['heldout_agreement']:9.3f}" if "heldout_agreement" in r else f"{'':>9}"
        lines.append(f"{label:<34}{cells}{100 * r['average']:7.1f}{norm}{agree}"
                     f"{r.get('time_s', 0):7.0f}s")
    return "\n".join(lines)
