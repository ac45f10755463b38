"""Baselines: simple averaging, task arithmetic and TIES-merging, all streamed from disk."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from calm.context import MergeContext
from calm.methods.base import MethodOutput
from calm.spec import AverageOptions, TaskArithmeticOptions, TiesOptions
from calm.task_vectors import Params, scale, zeros_like


def average(ctx: MergeContext, _: AverageOptions) -> MethodOutput:
    """θ0 + mean_t τ_t (= the mean of the fine-tuned weights)."""
    total = ctx.vectors.stream_sum(ctx.vectors.names)
    lam = 1.0 / len(ctx.vectors.names)
    return MethodOutput(scale(total, lam), info={"scaling": lam})


def _resolve_scale(ctx: MergeContext, tau: Params, opts: TaskArithmeticOptions) -> float:
    return ctx.best_scale(tau, opts.scaling_grid) if opts.scaling == "auto" else float(opts.scaling)


def task_arithmetic(ctx: MergeContext, opts: TaskArithmeticOptions) -> MethodOutput:
    """θ0 + λ·Σ_t τ_t, summed one checkpoint at a time."""
    total = ctx.vectors.stream_sum(ctx.vectors.names)
    lam = _resolve_scale(ctx, total, opts)
    return MethodOutput(scale(total, lam), info={"scaling": lam})


def trim(tau: Params, density: float) -> Params:
    """Keep the top-`density` fraction of |τ| over the whole vector, zero the rest."""
    flat = torch.cat([v.abs().flatten() for v in tau.values()])  # [P]
    k = max(1, int(round(density * flat.numel())))
    threshold = torch.topk(flat, k, sorted=False).values.min()
    return {n: torch.where(v.abs() >= threshold, v, torch.zeros_like(v)) for n, v in tau.items()}


def ties_merge(taus: Callable[[], Iterable[Params]], density: float) -> Params:
    """TIES: trim each τ_t, elect sign = sign(Σ_t trimmed τ_t), disjoint mean over agreeing
    entries. `taus()` yields the task vectors anew on each of its two passes (streaming)."""
    elected: Params | None = None
    for tau in taus():  # pass 1: elect signs
        t = trim(tau, density)
        elected = t if elected is None else {k: elected[k] + t[k] for k in t}
    assert elected is not None, "need at least one task vector"
    sign = {k: torch.sign(v) for k, v in elected.items()}
    total, count = zeros_like(sign), zeros_like(sign)
    for tau in taus():  # pass 2: disjoint mean
        t = trim(tau, density)
        for k, v in t.items():
            agree = (torch.sign(v) == sign[k]) & (v != 0)
            total[k] += torch.where(agree, v, torch.zeros_like(v))
            count[k] += agree.to(v.dtype)
    return {k: total[k] / count[k].clamp(min=1) for k in total}


def ties(ctx: MergeContext, opts: TiesOptions) -> MethodOutput:
    merged = ties_merge(lambda: (tau for _, tau in ctx.vectors.iter()), opts.density)
    lam = _resolve_scale(ctx, merged, opts)
    return MethodOutput(scale(merged, lam), info={"scaling": lam, "density": opts.density})
