"""Controls for CALM's learned masks: replay CALM's exact plan (same base group, λ, order and
per-step mask sizes) with a random mask or a largest-|τ_s| mask instead of the learned one."""

from __future__ import annotations

from typing import Literal

import torch

from calm.context import MergeContext
from calm.methods.base import MethodOutput
from calm.methods.masks import apply_mask
from calm.task_vectors import Params, scale

Control = Literal["random", "largest_tau"]


def control_mask(
    tau_s: Params, count: int, control: Control, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """A bool mask over τ_s's entries with exactly `count` True entries."""
    sizes = [v.numel() for v in tau_s.values()]
    total = sum(sizes)
    if control == "random":
        chosen = torch.randperm(total, generator=gen)[:count]
    else:
        flat = torch.cat([v.abs().flatten().cpu() for v in tau_s.values()])  # [P]
        chosen = torch.topk(flat, count, sorted=False).indices
    flat_mask = torch.zeros(total, dtype=torch.bool)
    flat_mask[chosen] = True
    out, offset = {}, 0
    for (name, v), n in zip(tau_s.items(), sizes, strict=True):
        out[name] = flat_mask[offset : offset + n].view_as(v).to(v.device)
        offset += n
    return out


def replay_calm_plan(
    ctx: MergeContext, calm_out: MethodOutput, control: Control, seed: int = 0
) -> MethodOutput:
    info = calm_out.info
    g0: list[str] = info["base_group"]
    if len(g0) == 1:
        tau_seq = ctx.vectors.get(g0[0])
    else:
        tau_seq = scale(ctx.vectors.stream_sum(g0), float(info["base_lambda"]))
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    for name in info["sequential_tasks"]:
        count = sum(int(m.sum()) for m in calm_out.masks[name].values())
        tau_s = ctx.vectors.get(name)
        masks[name] = control_mask(tau_s, max(count, 1), control, gen)
        tau_seq = apply_mask(tau_seq, tau_s, masks[name])
    return MethodOutput(tau_seq, masks, {"control": control, "replayed": "calm plan"})
