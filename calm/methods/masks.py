"""Step 3 of CALM: consensus-aware mask optimisation for one sequential task.

θ(m) = θ0 + τ_seq + σ(m)⊙Δ,  Δ = τ_s − τ_seq  (per tensor; m has one logit per entry).
Loss = Σ over every task seen so far of CE on its selected pseudo-labels. One update per
epoch from the summed gradients of `batches_per_task` shuffled batches of each seen task:

    binarize (reference):  m ← m − lr·∂L/∂m + α·sign(m)·σ'(m)     (∂L/∂m = σ'(m)·∂L/∂θ⊙Δ)
    l1:                    m ← m − lr·∂L/∂m − α·σ'(m)

With lr="auto"-style relative rates the step is lr_rel·∂L/∂m / s, s the scale of the first
epoch's mask gradient (mean |∂L/∂m| over its top 0.1% entries): scale-free across model sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from calm.context import MergeContext
from calm.forward import visual_features
from calm.heads import logits as head_logits
from calm.spec import CalmOptions
from calm.task_vectors import Params

TOP_FRACTION = 1e-3  # share of entries whose gradient defines the scale s


@dataclass
class MaskRun:
    mask: dict[str, torch.Tensor]  # name -> bool, True = take τ_s
    final_loss: float
    grad_scale: float  # s, the first epoch's mask-gradient scale


def init_logits(tau_s: Params, sparsity: float, b: float) -> Params:
    """m = +b on the top-k |τ_s| entries (k = sparsity·P, at least 1), −b elsewhere."""
    flat = torch.cat([v.abs().flatten() for v in tau_s.values()])  # [P]
    k = max(1, int(sparsity * flat.numel()))
    threshold = torch.topk(flat, k, sorted=False).values.min()
    return {
        n: torch.where(v.abs() >= threshold, b, -b).float().requires_grad_(True)
        for n, v in tau_s.items()
    }


def gradient_scale(grads: list[torch.Tensor]) -> float:
    flat = torch.cat([g.abs().flatten() for g in grads])  # [P]
    k = max(1, int(TOP_FRACTION * flat.numel()))
    return float(torch.topk(flat, k, sorted=False).values.mean().clamp(min=1e-30))


@torch.no_grad()
def mask_update(
    m: torch.Tensor, grad: torch.Tensor, step: float, regularizer: str, alpha: float
) -> None:
    """In place: one update of logits m given ∂L/∂m and the effective step size."""
    sig = torch.sigmoid(m)
    reg = torch.sign(m) if regularizer == "binarize" else -torch.ones_like(m)
    # binarize: +α·sign(m)·σ'(m) pushes logits away from 0; l1: −α·σ'(m) pushes M toward 0
    m += alpha * reg * sig * (1 - sig) - step * grad


def _batches(n: int, opts: CalmOptions, gen: torch.Generator) -> list[torch.Tensor]:
    """`batches_per_task` shuffled index batches into n selected samples."""
    perm = torch.randperm(n, generator=gen)
    out = []
    for i in range(opts.batches_per_task):
        if (i + 1) * opts.batch_size > n and i > 0:
            perm = torch.randperm(n, generator=gen)
            out.append(perm[: opts.batch_size])
        else:
            out.append(perm[i * opts.batch_size : (i + 1) * opts.batch_size])
    return out


def _epoch_loss(ctx: MergeContext, m: Params, base: Params, delta: Params, seen: list[str],
                opts: CalmOptions, gen: torch.Generator) -> float:
    """Accumulates ∂L/∂m into m[*].grad for L = Σ_tasks Σ_batches CE (one forward/backward for
    all seen tasks' batches together: the image tower is shared, only the heads differ)."""
    xs, spans = [], []  # spans: (task, start, labels)
    offset = 0
    for name in seen:
        task = ctx.tasks[name]
        assert task.pseudo is not None
        sel, labels = task.pseudo.selected, task.pseudo.selected_labels
        for idx in _batches(len(sel), opts, gen):
            xs.append(task.unlabeled[sel[idx].to(task.unlabeled.device)])  # [b, 3, H, W]
            spans.append((name, offset, labels[idx].to(ctx.device)))
            offset += len(idx)
    params = {k: base[k] + torch.sigmoid(m[k]) * delta[k] for k in base}  # θ(m)
    feats = visual_features(ctx.visual, params, torch.cat(xs), ctx.bf16)  # [B, D]
    loss = feats.new_zeros(())
    for name, start, y in spans:
        logits = head_logits(feats[start : start + len(y)], ctx.tasks[name].head)  # [b, C]
        loss = loss + F.cross_entropy(logits, y)
    loss.backward()
    return float(loss.detach())


def optimise_mask(ctx: MergeContext, tau_seq: Params, tau_s: Params, seen: list[str],
                  opts: CalmOptions, lr: float, relative: bool, stage: str) -> MaskRun:
    """Learn the binary mask choosing τ_s over τ_seq, entry by entry."""
    gen = torch.Generator().manual_seed(ctx.seed)
    base = {k: ctx.theta0[k] + tau_seq[k] for k in tau_seq}
    delta = {k: tau_s[k] - tau_seq[k] for k in tau_seq}
    m = init_logits(tau_s, opts.sparsity, opts.init_logit)
    scale, loss = 1.0, float("nan")
    for epoch in range(opts.epochs):
        ctx.check_cancel()
        for v in m.values():
            v.grad = None
        loss = _epoch_loss(ctx, m, base, delta, seen, opts, gen)
        grads = [v.grad for v in m.values()]
        if epoch == 0 and relative:
            scale = gradient_scale(grads)
        step = lr / scale if relative else lr
        for v in m.values():
            mask_update(v, v.grad, step, opts.regularizer, opts.alpha)
        on = torch.stack([(v > 0).sum() for v in m.values()]).sum()  # one host sync per epoch
        density = float(on) / sum(v.numel() for v in m.values())
        ctx.report(stage, (epoch + 1) / opts.epochs, f"epoch {epoch + 1}/{opts.epochs}",
                   loss=loss / max(1, len(seen)), mask_density=density)
    mask = {k: (v.detach() > 0) for k, v in m.items()}
    return MaskRun(mask=mask, final_loss=loss, grad_scale=scale)


def apply_mask(tau_seq: Params, tau_s: Params, mask: dict[str, torch.Tensor]) -> Params:
    """τ_seq ← (1−M)⊙τ_seq + M⊙τ_s with binary M: each entry is exactly one of the two."""
    return {k: torch.where(mask[k], tau_s[k], tau_seq[k]) for k in tau_seq}
