"""CALM (DESIGN.md §3): base group by task arithmetic, then the K sequential tasks each
mask-merged in turn with a consensus objective over every task seen so far.

`num_sequential: "auto"` runs the efficient plan (K=2) and the fully sequential one (K=T−1)
and keeps the merge with the higher held-out pseudo-label agreement over all tasks. Mask
cost is ∝ Σ_steps (tasks seen), so the pair costs (T²+3T)/2 − 1 + 2T−1 task-epochs against
(T²+T)/2 − 1 for the fully sequential plan alone: ×1.43 at T=8 (docs/design-notes.md). For
T ≤ 4 both are the same plan (a base group of ≤ 2 runs fully sequential) and it runs once.
"""

from __future__ import annotations

from typing import Any

import torch

from calm.context import MergeContext
from calm.methods.base import MethodOutput
from calm.methods.lr_search import learn_mask
from calm.methods.masks import apply_mask
from calm.plan import plan_cost, plan_sizes, split
from calm.spec import CalmOptions
from calm.task_vectors import Params, scale


def rank_tasks(ctx: MergeContext, opts: CalmOptions) -> tuple[list[str], dict[str, Any]]:
    """Tasks by held-out agreement of the all-task merge, worst served first."""
    names = ctx.vectors.names
    total = ctx.vectors.stream_sum(names)
    lam = ctx.best_scale(total, opts.lambda_grid) if opts.base_lambda == "auto" else opts.base_lambda
    agree = ctx.agreement(scale(total, float(lam)))
    del total
    ranked = sorted(names, key=lambda n: (agree[n], names.index(n)))
    return ranked, {"ranking_lambda": lam, "agreement_all_tasks": agree}


def plan(ctx: MergeContext, opts: CalmOptions, k: int,
         ranked: list[str] | None) -> tuple[list[str], list[str], str]:
    """-> (base group G0, ordered sequential tasks, plan name) for K=k (rules: calm.plan)."""
    names = ctx.vectors.names
    seq = list(opts.sequential_tasks) if opts.sequential_tasks is not None else \
        (ranked or names)[:k]
    return split(names, seq)


def run_plan(ctx: MergeContext, opts: CalmOptions, g0: list[str],
             seq: list[str]) -> tuple[Params, dict[str, torch.Tensor], dict[str, Any]]:
    """One plan: τ_seq from G0, then a mask per sequential task. -> (τ, masks, info)."""
    with ctx.sub_window(0.0, 0.05):
        if len(g0) == 1:
            tau_seq, lam = ctx.vectors.get(g0[0]), None
        else:
            total = ctx.vectors.stream_sum(g0)
            lam = ctx.best_scale(total, opts.lambda_grid, g0) if opts.base_lambda == "auto" \
                else float(opts.base_lambda)
            tau_seq = scale(total, lam)
            del total
    info: dict[str, Any] = {"base_group": g0, "sequential_tasks": seq, "base_lambda": lam,
                            "steps": {}}
    masks, seen = {}, list(g0)
    weights = [len(g0) + j + 1 for j in range(len(seq))]  # cost of a step ∝ tasks seen
    done = 0.0
    for j, name in enumerate(seq):
        tau_s = ctx.vectors.get(name)
        seen.append(name)
        lo, hi = done / sum(weights), (done + weights[j]) / sum(weights)
        with ctx.sub_window(0.05 + 0.95 * lo, 0.05 + 0.95 * hi):
            mask, step_info = learn_mask(ctx, tau_seq, tau_s, list(seen), opts, f"mask:{name}")
        done += weights[j]
        if j == 0 and opts.lr == "auto" and opts.lr_search == "first":
            opts = opts.model_copy(update={"lr_grid": [step_info["lr_relative"]]})
        tau_seq = apply_mask(tau_seq, tau_s, mask)
        masks[name] = {k: v.cpu() for k, v in mask.items()}
        info["steps"][name] = step_info
        del tau_s
    return tau_seq, masks, info


def calm(ctx: MergeContext, opts: CalmOptions) -> MethodOutput:
    t = len(ctx.vectors.names)
    sizes = plan_sizes(opts, t)
    with ctx.sub_window(0.0, 0.05):
        ranked, rank_info = (None, {"chosen_by": "user"}) if opts.sequential_tasks is not None \
            else rank_tasks(ctx, opts)
    costs = [plan_cost(t, k) for k in sizes]
    best: tuple[float, Params, dict, dict] | None = None
    candidates: dict[str, Any] = {}
    done = 0.0
    for k, cost in zip(sizes, costs, strict=True):
        g0, seq, name = plan(ctx, opts, k, ranked)
        lo, hi = done / sum(costs), (done + cost) / sum(costs)
        with ctx.sub_window(0.05 + 0.95 * lo, 0.05 + 0.95 * hi):
            tau, masks, info = run_plan(ctx, opts, g0, seq)
        done += cost
        score = ctx.score(tau) if len(sizes) > 1 else None
        candidates[f"K={len(seq)}"] = {"plan": name, "agreement": score,
                                       "mask_task_epochs": cost * opts.epochs}
        info.update(plan=name, num_sequential=len(seq))
        if best is None or (score is not None and score > best[0] + 1e-9):
            best = (score if score is not None else 0.0, _to_host(tau, len(sizes)), masks, info)
        del tau
    assert best is not None
    _, tau, masks, info = best
    info.update(rank_info)
    info["plan_choice"] = {"by": "held-out agreement" if len(sizes) > 1 else
                           ("user" if opts.num_sequential != "auto" or opts.sequential_tasks
                            else "only plan for T≤4"), "candidates": candidates}
    return MethodOutput({k: v.to(ctx.device) for k, v in tau.items()}, masks, info)


def _to_host(tau: Params, n_plans: int) -> Params:
    """A kept candidate waits on the host while the next plan runs on the device."""
    return {k: v.cpu() for k, v in tau.items()} if n_plans > 1 else tau
