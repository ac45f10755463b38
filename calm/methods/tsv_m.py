"""Task Singular Vectors merging, TSV-M (Gargiulo et al., "Task Singular Vectors: Reducing Task
Interference in Model Merging", CVPR 2025, arXiv 2412.00081).

For every 2-D tensor (layer) with task matrices Δ_t = U_t S_t V_tᵀ (r = min(m, n)):

    k      = ⌊r · share⌋                       share = 1/T by default (the paper's choice)
    U      = [U_1[:, :k] | … | U_T[:, :k]]      # [m, r] (zero columns where T·k < r)
    S      = [S_1[:k] , … , S_T[:k]]           # [r]
    Vh     = [V_1ᵀ[:k] ; … ; V_Tᵀ[:k]]         # [r, n]
    τ_TSV  = polar(U) · diag(S) · polar(Vh)    # [m, n], polar(A) = P·Qᵀ for A = P·Σ·Qᵀ

The polar factors remove the interference between the tasks' singular vectors (whitening).
Every other tensor is averaged over the tasks; the merged model is θ0 + α·τ_TSV (α = 1 in the
paper). One pass over the checkpoints: each task fills its slot and is dropped. Matches
FusionBench's `TaskSingularVectorMerging` (`compute_and_sum_svd_mem_reduction`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from calm.context import MergeContext
from calm.errors import CalmError
from calm.methods.base import MethodOutput
from calm.methods.runtime import check_exclude_keys, scaled_merge, stream_vectors
from calm.methods.spectral import Blocks, is_matrix
from calm.options import TsvMOptions, rank_share_problem
from calm.task_vectors import Params


def rank_per_task(rank: int, num_tasks: int, share: float | None) -> int:
    """k = ⌊r·share⌋ singular triplets kept per task (share 1/T when None), as FusionBench
    computes it (`int(r * (1 / T))`)."""
    return int(rank * (1 / num_tasks if share is None else share))


def tsv_merge(taus: Iterable[Params], num_tasks: int, share: float | None = None,
              exclude: Collection[str] = ()) -> Params:
    """τ_TSV (before α) from `num_tasks` task vectors, streamed once. Raises ValueError when
    num_tasks·k exceeds a layer's rank (share > 1/T)."""
    blocks: dict[str, Blocks] = {}
    sums: Params = {}
    names: list[str] = []
    seen = 0
    for i, tau in enumerate(taus):
        seen += 1
        names = names or list(tau)
        for name, w in tau.items():  # w: [m, n] or any other shape
            if not is_matrix(name, w, exclude):
                sums[name] = sums[name].add_(w) if i else w.clone()
                continue
            b = blocks.setdefault(name, Blocks.like(w))
            b.put_top(i, rank_per_task(b.s.shape[0], num_tasks, share), w)
    if seen != num_tasks:
        raise ValueError(f"expected {num_tasks} task vectors, got {seen}")
    out: Params = {}
    for name in names:
        if name in sums:
            out[name] = sums[name] / num_tasks  # mean over tasks
            continue
        b = blocks[name]
        u, vh = b.orthogonalized()  # [m, r], [r, n]
        out[name] = (u * b.s) @ vh  # polar(U)·diag(S)·polar(Vh): [m, n]
    return out


def tsv_m(ctx: MergeContext, opts: TsvMOptions) -> MethodOutput:
    num_tasks = len(ctx.vectors.names)
    problem = rank_share_problem(opts.rank_share, num_tasks)
    if problem:
        raise CalmError(f"options.rank_share: {problem}", code="invalid_options")
    exclude = check_exclude_keys(ctx, opts.exclude_keys)
    share = opts.rank_share if opts.rank_share is not None else 1 / num_tasks
    return scaled_merge(
        ctx, lambda: tsv_merge(stream_vectors(ctx, "tsv_m"), num_tasks, opts.rank_share, exclude),
        opts, rank_share=share)
