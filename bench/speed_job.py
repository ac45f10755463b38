"""One measurement of bench.merge_speed in a fresh process (clean peak RSS); prints a JSON line.

    python -m bench.speed_job '{"kind": "job", "root": ..., "tasks": 4, "options": {...}}'
    python -m bench.speed_job '{"kind": "overhead", "root": ..., "pairs": 5, "images": 16}'
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.speed_fixtures import job_spec, make_fixture


def _fixture(args: dict[str, Any]) -> Any:
    meta = json.loads((Path(args["root"]) / "fixture.json").read_text())
    return make_fixture(Path(args["root"]), meta["image_size"], meta["tasks"], meta["unlabeled"],
                        meta["large"])


def lr_search_share(info: dict[str, Any]) -> float:
    """Share of the plan's mask compute (epochs x tasks seen) spent on discarded lr candidates."""
    seen, useful, wasted = len(info["base_group"]), 0.0, 0.0
    for step in info["steps"].values():
        seen += 1
        useful += step["epochs"] * seen
        candidates = len(step.get("lr_scores", {}))
        if candidates > 1:
            wasted += (candidates - 1) * step["lr_screen_epochs"] * seen
    return wasted / (useful + wasted)


def job(args: dict[str, Any]) -> dict[str, Any]:
    from calm import MergeRequest, merge

    fx = _fixture(args)
    spec = MergeRequest.model_validate(job_spec(
        fx, args["tasks"], args["options"], args.get("device", "cpu"),
        args.get("precision", "auto"), args.get("data", "unlabeled"),
        args.get("micro_batch_size", "auto")))
    cuda = spec.run.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = merge(spec)
    seconds = time.perf_counter() - start
    info = result.report["method_info"]
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "stage_seconds": {k: round(v, 2) for k, v in result.report["timings"].items()},
        "lr_search_share": round(lr_search_share(info), 4),
        "micro_batch_size": result.report["micro_batch_size"],
        "plan": info["plan"], "checkpoint_reads": result.report["checkpoint_reads"],
        "steps": {k: {kk: v.get(kk) for kk in ("lr_relative", "lr_scores", "epochs")}
                  for k, v in info["steps"].items()},
    }


def overhead(args: dict[str, Any]) -> dict[str, Any]:
    """Median over interleaved pairs of one mask epoch / a plain forward+backward."""
    from calm import MergeRequest
    from calm.loading import load_context, pseudo_label_pass
    from calm.methods.masks import MaskState, MaskTrainer, _pieces, init_logits
    from calm.spec import CalmOptions

    fx, n = _fixture(args), args["images"]
    opts = CalmOptions(batch_size=n // 4, batches_per_task=2, epochs=1, lr_grid=[1.0])
    spec = MergeRequest.model_validate(job_spec(fx, 2, opts.model_dump(), data="large",
                                                micro_batch_size=n))
    loaded = load_context(spec, spec.run, {"micro_batch_size": n})
    pseudo_label_pass(loaded, opts)
    ctx = loaded.ctx
    tau_seq, tau_s = ctx.vectors.get("task0"), ctx.vectors.get("task1")
    seen = ["task0", "task1"]
    trainer = MaskTrainer(ctx, tau_seq, tau_s, seen, opts, n, {})
    init = init_logits(tau_s, opts.sparsity, opts.init_logit)
    params = [p for name, p in ctx.visual.named_parameters()]

    def mask_epoch() -> float:
        st = MaskState({k: v.clone() for k, v in init.items()}, torch.Generator().manual_seed(0))
        start = time.perf_counter()
        trainer.run(st, 1.0, True, 1, "mask", 1)
        return time.perf_counter() - start

    def plain_epoch() -> float:  # the same images through the ordinary module
        pieces = _pieces(ctx, seen, opts, torch.Generator().manual_seed(0))
        start = time.perf_counter()
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        x = torch.cat([ctx.tasks[t].unlabeled.batch(rows, ctx.device) for t, rows, _, _ in pieces])
        feats = ctx.visual(x)
        loss, at = feats.new_zeros(()), 0
        for t, rows, labels, w in pieces:
            logits = F.normalize(feats[at:at + len(rows)], dim=-1) @ ctx.tasks[t].head.t()
            loss = loss + w * F.cross_entropy(logits, labels, reduction="sum")
            at += len(rows)
        loss.backward()
        elapsed = time.perf_counter() - start
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        return elapsed

    mask_epoch(), plain_epoch()  # warm-up
    pairs = [(mask_epoch(), plain_epoch()) for _ in range(args["pairs"])]
    ratios = [m / p for m, p in pairs]
    return {"median_ratio": round(statistics.median(ratios), 4), "images": n,
            "pairs_s": [[round(m, 3), round(p, 3)] for m, p in pairs]}


def main() -> None:
    args = json.loads(sys.argv[1])
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    out = {"job": job, "overhead": overhead}[args["kind"]](args)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
