"""The mask learning rate of one sequential step: fixed, or chosen on held-out pseudo-labels.

With `lr: "auto"` every candidate of `lr_grid` (relative rates, see masks.py) runs the first
`lr_screen` share of the epochs from the same start (same init, same batch order); the
binarised masks are scored on the held-out share of the seen tasks' pseudo-labels; only the
best candidate continues to the last epoch — so the result is exactly that of running the
chosen rate alone, and the search costs (candidates − 1)·screen more epochs. When the best
rate sits at an edge of the grid (strictly better than its neighbour: ties go to the rate nearer
the grid's centre), up to `lr_grid_extend` further rates beyond it are tried (same ratio as the
grid's end) and the report says so.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from calm.context import MergeContext
from calm.methods.masks import MaskState, MaskTrainer, auto_micro_batch, init_logits
from calm.spec import CalmOptions
from calm.task_vectors import Params, add


def _trainer(ctx: MergeContext, tau_seq: Params, tau_s: Params, seen: list[str],
             opts: CalmOptions) -> MaskTrainer:
    buffers = ctx.merged_buffers(add(ctx.theta0, tau_seq), seen) if ctx.has_buffers else {}
    trainer = MaskTrainer(ctx, tau_seq, tau_s, seen, opts, ctx.micro_batch_size or 32, buffers)
    if not ctx.micro_batch_size:  # "auto": probed once per merge
        trainer._fill({k: torch.zeros_like(v) for k, v in tau_s.items()}, binary=False)
        ctx.micro_batch_size = auto_micro_batch(ctx, {**trainer.theta, **buffers})
        trainer.micro = ctx.micro_batch_size
    return trainer


def _better(a: float, b: float, scores: dict[float, float], center: float) -> bool:
    """Rate a beats b: a higher held-out score, or an equal one (within 1e-9) closer to the
    grid's centre on a log scale — so ties (common on small held-out sets) never walk the
    search off an edge of the grid."""
    if abs(scores[a] - scores[b]) > 1e-9:
        return scores[a] > scores[b]
    return abs(math.log(a / center)) < abs(math.log(b / center))


def _next_rate(scores: dict[float, float], best: float, grid: list[float]) -> float | None:
    """The rate beyond the grid's edge when the best one is there, else None."""
    rates = sorted(scores)
    up = grid[-1] / grid[-2] if len(grid) > 1 else 3.0
    down = grid[1] / grid[0] if len(grid) > 1 else 3.0
    if best == rates[-1]:
        return best * up
    if best == rates[0]:
        return best / down
    return None


def learn_mask(ctx: MergeContext, tau_seq: Params, tau_s: Params, seen: list[str],
               opts: CalmOptions, stage: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The binary mask of one step (True = take τ_s) and what was chosen."""
    trainer = _trainer(ctx, tau_seq, tau_s, seen, opts)
    init = init_logits(tau_s, opts.sparsity, opts.init_logit)
    epochs = opts.epochs

    def fresh() -> MaskState:
        return MaskState({k: v.clone() for k, v in init.items()},
                         torch.Generator().manual_seed(ctx.seed))

    if opts.lr != "auto" or len(opts.lr_grid) == 1:
        relative = opts.lr == "auto"
        lr = opts.lr_grid[0] if relative else float(opts.lr)
        st = fresh()
        trainer.run(st, lr, relative, epochs, stage, epochs)
        info: dict[str, Any] = {"lr_relative": lr} if relative else {"lr": lr}
        return _finish(trainer, st, info, stage)
    grid = sorted(opts.lr_grid)
    center = math.sqrt(grid[0] * grid[-1])
    screen = max(1, min(epochs, round(opts.lr_screen * epochs)))
    budget = (len(grid) + opts.lr_grid_extend) * screen + epochs - screen  # progress units
    scores: dict[float, float] = {}
    best: tuple[float, MaskState] | None = None
    extended: list[float] = []
    queue = list(grid)
    while queue:
        rate = queue.pop(0)
        st = fresh()
        with ctx.sub_window(len(scores) * screen / budget, (len(scores) + 1) * screen / budget):
            trainer.run(st, rate, True, screen, stage, epochs, f"screening lr ×{rate:g}: ")
        scores[rate] = trainer.score(st)
        if best is None or _better(rate, best[0], scores, center):
            best = (rate, st)
        del st
        if not queue and len(extended) < opts.lr_grid_extend:
            nxt = _next_rate(scores, best[0], grid)
            if nxt is not None and (not extended or best[0] == extended[-1]):
                extended.append(nxt)
                queue.append(nxt)
    assert best is not None
    rate, st = best
    with ctx.sub_window(len(scores) * screen / budget, 1.0):
        trainer.run(st, rate, True, epochs - screen, stage, epochs, f"lr ×{rate:g}: ")
    info = {"lr_relative": rate, "lr_scores": {f"{r:g}": s for r, s in sorted(scores.items())},
            "lr_screen_epochs": screen, "lr_grid_extended": extended}
    return _finish(trainer, st, info, stage)


def _finish(trainer: MaskTrainer, st: MaskState, info: dict[str, Any],
            stage: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    info.update(grad_scale=st.scale, density=st.density(), epochs=st.epoch,
                agreement=trainer.score(st))
    mask = st.mask()
    trainer.ctx.report(stage, 1.0, "mask learned",
                       {"mask_density": info["density"]}, force=True)
    return mask, info
