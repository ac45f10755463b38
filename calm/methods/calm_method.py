"""CALM (DESIGN.md §3): base group by task arithmetic, then the K sequential tasks each
mask-merged in turn with a consensus objective over every task seen so far."""

from __future__ import annotations

from typing import Any

from calm.context import MergeContext
from calm.errors import CalmError
from calm.methods.base import MethodOutput
from calm.methods.masks import MaskRun, apply_mask, optimise_mask
from calm.spec import CalmOptions
from calm.task_vectors import Params, scale


def choose_sequential(ctx: MergeContext, opts: CalmOptions) -> tuple[list[str], dict[str, Any]]:
    """The K tasks the all-task merge serves worst (lowest pseudo-label agreement first)."""
    names = ctx.vectors.names
    if opts.sequential_tasks is not None:
        return list(opts.sequential_tasks), {"chosen_by": "user"}
    total = ctx.vectors.stream_sum(names)
    lam = ctx.best_scale(total, opts.lambda_grid) if opts.base_lambda == "auto" else opts.base_lambda
    agree = ctx.agreement(scale(total, float(lam)))
    ranked = sorted(names, key=lambda n: (agree[n], names.index(n)))
    info = {"chosen_by": "agreement", "ranking_lambda": lam, "agreement_all_tasks": agree}
    return ranked[: opts.num_sequential], info


def plan(ctx: MergeContext, opts: CalmOptions) -> tuple[list[str], list[str], dict[str, Any]]:
    """-> (base group G0, ordered sequential tasks, info). With |G0| ≤ 2 the plan is fully
    sequential (reference behaviour): G0's first task enters at full strength, the rest of
    G0 is mask-merged before the chosen sequential tasks."""
    names = ctx.vectors.names
    k = len(opts.sequential_tasks) if opts.sequential_tasks is not None else opts.num_sequential
    if not 1 <= k <= len(names) - 1:
        raise CalmError(
            f"CALM needs 1 ≤ K ≤ T−1 sequential tasks; got K={k} for T={len(names)} tasks",
            code="invalid_options",
        )
    seq, info = choose_sequential(ctx, opts.model_copy(update={"num_sequential": k}))
    g0 = [n for n in names if n not in seq]
    if len(g0) <= 2:
        return g0[:1], g0[1:] + seq, {**info, "plan": "fully_sequential"}
    return g0, seq, {**info, "plan": "efficient"}


def _mask_step(ctx: MergeContext, tau_seq: Params, tau_s: Params, seen: list[str],
               opts: CalmOptions, stage: str) -> tuple[MaskRun, dict[str, Any]]:
    """One sequential task: a fixed raw lr, or the relative lr chosen by pseudo-label accuracy."""
    if opts.lr != "auto":
        return optimise_mask(ctx, tau_seq, tau_s, seen, opts, float(opts.lr), False, stage), {
            "lr": opts.lr
        }
    best: tuple[float, MaskRun, float] | None = None
    scores = {}
    for i, rel in enumerate(opts.lr_grid):
        with ctx.sub_window(i / len(opts.lr_grid), (i + 1) / len(opts.lr_grid)):
            run = optimise_mask(ctx, tau_seq, tau_s, seen, opts, rel, True, stage)
        agree = ctx.agreement(apply_mask(tau_seq, tau_s, run.mask), seen)
        scores[rel] = sum(agree.values()) / len(agree)
        if best is None or scores[rel] > best[2] + 1e-9:
            best = (rel, run, scores[rel])
    assert best is not None
    return best[1], {"lr_relative": best[0], "lr_scores": scores, "grad_scale": best[1].grad_scale}


def calm(ctx: MergeContext, opts: CalmOptions) -> MethodOutput:
    with ctx.sub_window(0.0, 0.1):
        g0, seq, info = plan(ctx, opts)
        if len(g0) == 1:
            tau_seq, lam = ctx.vectors.get(g0[0]), None
        else:
            total = ctx.vectors.stream_sum(g0)
            lam = ctx.best_scale(total, opts.lambda_grid, g0) if opts.base_lambda == "auto" \
                else float(opts.base_lambda)
            tau_seq = scale(total, lam)
    info.update(base_group=g0, sequential_tasks=seq, base_lambda=lam, steps={})
    masks, seen = {}, list(g0)
    for j, name in enumerate(seq):
        tau_s = ctx.vectors.get(name)
        seen.append(name)
        with ctx.sub_window(0.1 + 0.9 * j / len(seq), 0.1 + 0.9 * (j + 1) / len(seq)):
            run, step_info = _mask_step(ctx, tau_seq, tau_s, seen, opts, f"mask:{name}")
        if j == 0 and opts.lr == "auto" and opts.lr_search == "first":
            opts = opts.model_copy(update={"lr_grid": [step_info["lr_relative"]]})
        tau_seq = apply_mask(tau_seq, tau_s, run.mask)
        masks[name] = run.mask
        total_entries = sum(m.numel() for m in run.mask.values())
        step_info["density"] = sum(int(m.sum()) for m in run.mask.values()) / total_entries
        info["steps"][name] = step_info
        del tau_s
    return MethodOutput(tau_seq, masks, info)
