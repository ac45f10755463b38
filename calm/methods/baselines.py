"""Baselines: simple averaging, task arithmetic and TIES-merging, all streamed from disk.

The TIES and task-arithmetic arithmetic follows FusionBench (`fusion_bench.method.ties_merging`,
`task_arithmetic`) entry for entry; the committed fixtures in tests/calm/fixtures/ check it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from calm.context import MergeContext
from calm.methods.base import MethodOutput
from calm.methods.runtime import scaled_merge, stream_vectors
from calm.spec import AverageOptions, TaskArithmeticOptions, TiesOptions
from calm.task_vectors import Params, scale, zeros_like


def average(ctx: MergeContext, _: AverageOptions) -> MethodOutput:
    """θ0 + mean_t τ_t (= the mean of the fine-tuned weights)."""
    total = ctx.vectors.stream_sum(ctx.vectors.names)
    lam = 1.0 / len(ctx.vectors.names)
    return MethodOutput(scale(total, lam), info={"scaling": lam})


def sum_task_vectors(taus: Iterable[Params]) -> tuple[Params, int]:
    """(Σ_t τ_t, T), one task vector in memory at a time (task arithmetic before its λ)."""
    total: Params | None = None
    count = 0
    for tau in taus:
        count += 1
        if total is None:
            total = {k: v.clone() for k, v in tau.items()}
        else:
            for k, v in tau.items():
                total[k] += v
    assert total is not None, "need at least one task vector"
    return total, count


def task_arithmetic(ctx: MergeContext, opts: TaskArithmeticOptions) -> MethodOutput:
    """θ0 + λ·Σ_t τ_t (Ilharco et al., ICLR 2023), summed one checkpoint at a time."""
    return scaled_merge(ctx, lambda: sum_task_vectors(stream_vectors(ctx, "task_arithmetic"))[0],
                        opts)


def trim(tau: Params, density: float) -> Params:
    """Keep the largest |τ| entries over the whole vector (all tensors together), zero the rest.

    Convention of the TIES reference code, which FusionBench inherits (`topk_values_mask`): with
    P entries, keep every entry whose |τ| is at least the (P − ⌊density·P⌋)-th smallest, i.e.
    ⌊density·P⌋ + 1 entries when there are no ties (all of them at density 1, where the
    reference code fails)."""
    flat = torch.cat([v.abs().flatten() for v in tau.values()])  # [P]
    keep = min(flat.numel(), int(flat.numel() * density) + 1)
    threshold = torch.topk(flat, keep, sorted=False).values.min()  # the keep-th largest |τ|
    return {n: torch.where(v.abs() >= threshold, v, torch.zeros_like(v)) for n, v in tau.items()}


def elect_signs(trimmed_sum: Params) -> Params:
    """γ = sign(Σ_t trimmed τ_t); where that is 0 (no entry, or an exact cancellation) γ takes
    the majority sign, sign(Σ over all entries of γ), as FusionBench's `resolve_zero_signs`."""
    sign = {k: torch.sign(v) for k, v in trimmed_sum.items()}
    votes = sum(int((s > 0).sum()) - int((s < 0).sum()) for s in sign.values())
    majority = float((votes > 0) - (votes < 0))  # in {-1, 0, 1}
    return {k: torch.where(s == 0, torch.full_like(s, majority), s) for k, s in sign.items()}


def ties_merge(taus: Callable[[], Iterable[Params]], density: float,
               merge_func: str = "mean") -> Params:
    """TIES-merging (Yadav et al., NeurIPS 2023): trim each τ_t, elect signs, disjoint merge.

    `taus()` yields the task vectors anew on each of its two passes (streaming). An entry of
    τ_t takes part where it agrees with the elected sign γ: `v > 0` where γ > 0, else `v < 0`
    (FusionBench's rule; γ is only 0 when even the majority vote is a tie). `merge_func`:
    "mean" (the paper's disjoint mean), "sum" (FusionBench's config default) or "max" (largest
    agreeing |v|, times γ)."""
    elected: Params | None = None
    for tau in taus():  # pass 1: Σ_t trimmed τ_t
        t = trim(tau, density)
        elected = t if elected is None else {k: elected[k] + t[k] for k in t}
    assert elected is not None, "need at least one task vector"
    sign = elect_signs(elected)
    total, count = zeros_like(sign), zeros_like(sign)
    for tau in taus():  # pass 2: disjoint aggregation
        for k, v in trim(tau, density).items():
            agree = torch.where(sign[k] > 0, v > 0, v < 0)
            picked = torch.where(agree, v, torch.zeros_like(v))
            if merge_func == "max":
                total[k] = torch.maximum(total[k], picked.abs())
            else:
                total[k] += picked
            count[k] += agree.to(v.dtype)
    if merge_func == "max":
        return {k: total[k] * sign[k] for k in total}
    if merge_func == "sum":
        return total
    return {k: total[k] / count[k].clamp(min=1) for k in total}


def ties(ctx: MergeContext, opts: TiesOptions) -> MethodOutput:
    passes = iter([(0.0, 0.5), (0.5, 1.0)])
    return scaled_merge(
        ctx, lambda: ties_merge(lambda: stream_vectors(ctx, "ties", next(passes)), opts.density,
                                opts.merge_func),
        opts, density=opts.density, merge_func=opts.merge_func)
