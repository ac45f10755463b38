"""What the thin method wrappers share: the rule for the global scale of a merge, streaming
task vectors with progress and cancellation, and option checks that need the model.

Scale: a number is used as given; `"auto"` picks the factor from the method's grid by
pseudo-label agreement (`MergeContext.best_scale`) when every task has pseudo-labels from its
unlabeled data, and falls back to the method's published default otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal, Protocol

from calm.context import MergeContext
from calm.errors import CalmError
from calm.methods.base import MethodOutput
from calm.task_vectors import Params, scale


class ScaledOptions(Protocol):
    scaling: float | Literal["auto"]
    scaling_grid: list[float]
    default_scaling: float


def has_pseudo_labels(ctx: MergeContext) -> bool:
    """True when the tasks' unlabeled data gave pseudo-labels to score a scale against."""
    return bool(ctx.tasks) and all(t.pseudo is not None for t in ctx.tasks.values())


def resolve_scale(ctx: MergeContext, tau: Params, opts: ScaledOptions) -> tuple[float, str]:
    """(factor, how it was chosen: "user" | "pseudo_label_agreement" | "published_default")."""
    if opts.scaling != "auto":
        return float(opts.scaling), "user"
    if has_pseudo_labels(ctx):
        return ctx.best_scale(tau, opts.scaling_grid), "pseudo_label_agreement"
    return float(opts.default_scaling), "published_default"


def scaled_merge(ctx: MergeContext, build: Callable[[], Params], opts: ScaledOptions,
                 **info: Any) -> MethodOutput:
    """θ0 + factor·τ_merged: `build()` makes τ_merged in the first half of the method's progress
    window, the scale is chosen in the second half (progress never goes back)."""
    with ctx.sub_window(0.0, 0.5):
        merged = build()
    with ctx.sub_window(0.5, 1.0):
        factor, chosen_by = resolve_scale(ctx, merged, opts)
    return MethodOutput(scale(merged, factor),
                        info={"scaling": factor, "scaling_chosen_by": chosen_by, **info})


def stream_vectors(ctx: MergeContext, stage: str,
                   window: tuple[float, float] = (0.0, 1.0)) -> Iterator[Params]:
    """τ_t for every task, one checkpoint in memory at a time, reporting progress into
    `window` of the method's share and checking for cancellation before each load."""
    names = ctx.vectors.names
    lo, hi = window
    for i, task in enumerate(names):
        ctx.check_cancel()
        yield ctx.vectors.get(task)
        ctx.report(stage, lo + (hi - lo) * (i + 1) / len(names), f"{task} merged")


def check_exclude_keys(ctx: MergeContext, exclude_keys: list[str]) -> set[str]:
    """The excluded tensor names, each of them one of the merged (float `visual.*`) names."""
    unknown = sorted(set(exclude_keys) - set(ctx.theta0))
    if unknown:
        raise CalmError(f"exclude_keys names tensors that are not merged: {unknown[:5]} "
                        "(use names of float visual.* parameters of the checkpoint)",
                        code="invalid_options")
    return set(exclude_keys)
