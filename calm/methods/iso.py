"""Isotropic merging, Iso-C and Iso-CTS (Marczak et al., "No Task Left Behind: Isotropic Model
Merging with Common and Task-Specific Subspaces", ICML 2025, arXiv 2502.04959).

Iso-C, for every 2-D tensor (layer), with Σ = Σ_t Δ_t = U·diag(s)·Vᵀ:

    τ_iso = mean(s) · U·Vᵀ                      # [m, n]: the sum's spectrum made flat

Iso-CTS keeps the top c singular directions of Σ as the common subspace and gives each task k
directions of its own, taken from Δ_t with the common part projected out:

    c      = ⌊r·f⌋;  T·k = round((r − c)/T)·T;  c ← r − T·k      (f = common_space_fraction)
    Δ_t^ts = Δ_t − U_c·U_cᵀ·Δ_t                                  # [m, n]
    U      = [U_1^ts[:, :k] | … | U_T^ts[:, :k] | U_c]           # [m, r]
    S      = [s_1^ts[:k], … , s_T^ts[:k], s[:c]]                  # [r]
    Vh     = [V_1^tsᵀ[:k] ; … ; V_T^tsᵀ[:k] ; V_cᵀ]              # [r, n]
    τ_iso  = mean(S) · polar(U)·polar(Vh)                          # [m, n]

Every other tensor is averaged over the tasks; the merged model is θ0 + α·τ_iso. Iso-C streams
the checkpoints once (a running sum), Iso-CTS twice (the sum, then each task's own subspace).
Both match FusionBench's `iso_c` / `iso_cts` (fusion_bench.method.isotropic_merging). `round` is
Python's (halves to even), as there; where that rounding would give the tasks more directions
than the rank holds (FusionBench then fails), each task gets one direction fewer.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

import torch

from calm.context import MergeContext
from calm.methods.base import MethodOutput
from calm.methods.baselines import sum_task_vectors
from calm.methods.runtime import check_exclude_keys, scaled_merge, stream_vectors
from calm.methods.spectral import Blocks, is_matrix, polar
from calm.spec import IsoCOptions, IsoCTSOptions
from calm.task_vectors import Params


def iso_c_merge(taus: Iterable[Params], exclude: Collection[str] = ()) -> Params:
    """Iso-C's τ_iso (before α), streamed once."""
    total, num_tasks = sum_task_vectors(taus)
    out: Params = {}
    for name, w in total.items():  # w: Σ_t Δ_t
        if not is_matrix(name, w, exclude):
            out[name] = w / num_tasks  # mean over tasks
            continue
        u, s, vh = torch.linalg.svd(w, full_matrices=False)  # [m, r], [r], [r, n]
        out[name] = s.mean() * (u @ vh)  # [m, n]
    return out


def subspace_sizes(rank: int, num_tasks: int, common_fraction: float) -> tuple[int, int]:
    """(c, k): directions of the common subspace and of each task's own subspace; c + T·k = r."""
    common = int(rank * common_fraction)
    task_total = round((rank - common) / num_tasks) * num_tasks
    if task_total > rank:
        task_total -= num_tasks
    return rank - task_total, task_total // num_tasks


def iso_cts_merge(taus: Callable[[], Iterable[Params]], common_fraction: float = 0.8,
                  exclude: Collection[str] = ()) -> Params:
    """Iso-CTS's τ_iso (before α). `taus()` yields the task vectors anew on each of its two
    passes (one checkpoint in memory at a time)."""
    total, num_tasks = sum_task_vectors(taus())  # pass 1: Σ_t Δ_t
    names = list(total)
    means: Params = {}
    common: dict[str, tuple[torch.Tensor, int]] = {}  # name -> (U_c [m, c], k)
    blocks: dict[str, Blocks] = {}
    for name in names:
        w = total.pop(name)  # the sum is dropped layer by layer
        if not is_matrix(name, w, exclude):
            means[name] = w / num_tasks  # mean over tasks
            continue
        c, k = subspace_sizes(min(w.shape), num_tasks, common_fraction)
        u, s, vh = torch.linalg.svd(w, full_matrices=False)  # [m, r], [r], [r, n]
        blocks[name] = Blocks.like(w)
        blocks[name].put(num_tasks * k, u[:, :c], s[:c], vh[:c])  # common part, last slots
        common[name] = (u[:, :c], k)
    for i, tau in enumerate(taus()):  # pass 2: each task's own directions
        for name, (u_c, k) in common.items():
            if k == 0:
                continue
            w = tau[name]  # [m, n]
            w_ts = w - u_c @ (u_c.T @ w)  # project out the common subspace: [m, n]
            blocks[name].put_top(i, k, w_ts)
    out: Params = {}
    for name in names:
        if name in means:
            out[name] = means[name]
            continue
        b = blocks[name]
        out[name] = b.s.mean() * (polar(b.u) @ polar(b.vh))  # [m, n]
    return out


def iso_c(ctx: MergeContext, opts: IsoCOptions) -> MethodOutput:
    exclude = check_exclude_keys(ctx, opts.exclude_keys)
    return scaled_merge(ctx, lambda: iso_c_merge(stream_vectors(ctx, "iso_c"), exclude), opts)


def iso_cts(ctx: MergeContext, opts: IsoCTSOptions) -> MethodOutput:
    exclude = check_exclude_keys(ctx, opts.exclude_keys)
    passes = iter([(0.0, 0.5), (0.5, 1.0)])
    return scaled_merge(
        ctx, lambda: iso_cts_merge(lambda: stream_vectors(ctx, "iso_cts", next(passes)),
                                   opts.common_space_fraction, exclude),
        opts, common_space_fraction=opts.common_space_fraction)
