"""Merge-speed benchmark on a ViT-B/32-sized tower, one command:

    python -m bench.merge_speed [--quick] [--out bench/results/merge_speed.json]

A random-init open_clip `ViT-B-32` (88M image-tower parameters; nothing downloaded), synthetic
fine-tuned checkpoints (base + N(0, 1e-3) on the image tower) and random preprocessed images.
CPU by default; the CUDA section runs when a GPU is present. It measures:

- `mask_step_overhead`: median over interleaved pairs of (one CALM mask epoch) / (a plain
  forward+backward of the same images through an ordinary nn.Module) — target ≤ 1.3;
- `peak_rss_mb_by_tasks` {2, 4, 8}: peak RSS of a whole default CALM job (epochs cut to 1) in a
  fresh process per T — target flat (max/min ≤ 1.25). The micro-batch is fixed at 16 so that
  even the smallest job fills it ('auto' sizes it to memory: a cap, equally independent of T);
- `peak_rss_mb_by_images_per_epoch` {64, 256, 1024}: the same job (T=2, one lr) with that many
  images per epoch — target flat: this is what micro-batching proves;
- `stage_seconds` of a default job and `lr_search_share`, the share of mask compute spent on lr
  candidates that are discarded — target ≤ 0.25;
- on CUDA: `peak_gpu_mb` and `job_seconds` of 8 tasks at defaults, 224 px, 2,000 unlabeled
  images per task, bf16 and fp32 — targets ≤ 5 min and ≤ 24 GB on one H100/H200-class GPU.

`--quick` runs the CPU part at 112 px (the same 88M-parameter tower; 4x fewer tokens) so that
it finishes in minutes on 2 cores; the full run uses 224 px.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.speed_fixtures import Fixture, make_fixture

DEFAULT_OUT = Path("bench/results/merge_speed.json")
# Images per compared epoch: 2 tasks x 2 batches x 64. The mask math is a fixed cost per epoch
# (σ(m), Δ, the update: a few passes over 88M entries), so the ratio falls as an epoch grows; a
# default job's epoch is |seen| x 2 x 128 images. (16 images gave 5.3 at 112 px on the CPU.)
OVERHEAD_IMAGES = 256


def _child(args: dict[str, Any]) -> dict[str, Any]:
    """Run one job in a fresh process (clean peak RSS); returns its JSON line."""
    cmd = [sys.executable, "-m", "bench.speed_job", json.dumps(args)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"job {args} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def overhead(fx: Fixture, pairs: int, images: int) -> dict[str, Any]:
    """Interleaved pairs of one mask epoch vs a plain forward+backward of the same images."""
    return _child({"kind": "overhead", "root": str(fx.root), "pairs": pairs, "images": images})


MICRO = 16  # the mask-gradient micro-batch of the memory series: even the smallest job fills it


def rss_by_tasks(fx: Fixture, counts: list[int]) -> dict[str, float]:
    """A whole default job (epochs cut to 1) over T tasks, 16 unlabeled images each."""
    out = {}
    for t in counts:
        r = _child({"kind": "job", "root": str(fx.root), "tasks": t, "options": {"epochs": 1},
                    "micro_batch_size": MICRO})
        out[str(t)] = r["peak_rss_mb"]
        print(f"  T={t}: peak RSS {r['peak_rss_mb']:.0f} MB, {r['seconds']:.0f} s", flush=True)
    return out


def rss_by_images(fx: Fixture, per_epoch: list[int]) -> dict[str, float]:
    """T=2: one mask step over 2 seen tasks x 2 batches; batch = images / 4. One lr (the search
    would only multiply the time, not the memory)."""
    out = {}
    for n in per_epoch:
        opts = {"epochs": 1, "batch_size": n // 4, "lr_grid": [1.0]}
        r = _child({"kind": "job", "root": str(fx.root), "tasks": 2, "options": opts,
                    "data": "large", "micro_batch_size": MICRO})
        out[str(n)] = r["peak_rss_mb"]
        print(f"  {n} images/epoch: peak RSS {r['peak_rss_mb']:.0f} MB, {r['seconds']:.0f} s",
              flush=True)
    return out


def stages(fx: Fixture, tasks: int, epochs: int) -> dict[str, Any]:
    return _child({"kind": "job", "root": str(fx.root), "tasks": tasks,
                   "options": {"epochs": epochs}, "micro_batch_size": MICRO})


def flat(values: dict[str, float]) -> float:
    return max(values.values()) / min(values.values())


def cuda_section(quick: bool) -> dict[str, Any] | None:
    import torch

    if not torch.cuda.is_available():
        return None
    fx = make_fixture(Path("bench/cache/merge_speed-cuda"), image_size=224, tasks=8,
                      unlabeled=200 if quick else 2000, large=0)
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "unlabeled_per_task": fx.unlabeled}
    for precision in ("bf16", "fp32"):
        r = _child({"kind": "job", "root": str(fx.root), "tasks": 8, "options": {},
                    "device": "cuda", "precision": precision})
        out[precision] = {"job_seconds": r["seconds"], "peak_gpu_mb": r["peak_gpu_mb"],
                          "stage_seconds": r["stage_seconds"]}
        print(f"  CUDA {precision}: {r['seconds']:.0f} s, peak {r['peak_gpu_mb']:.0f} MB", flush=True)
    return out


def run(quick: bool, out_path: Path, overhead_only: bool = False) -> dict[str, Any]:
    """The whole benchmark, or (overhead_only) only the overhead, updating out_path's JSON."""
    size = 112 if quick else 224
    start = time.perf_counter()
    fx = make_fixture(Path(f"bench/cache/merge_speed-{size}"), image_size=size, tasks=8,
                      unlabeled=16, large=400)
    print(f"ViT-B-32 at {size} px, {fx.visual_params / 1e6:.1f}M image-tower parameters", flush=True)
    result: dict[str, Any] = {"image_size": size, "quick": quick,
                              "visual_params": fx.visual_params}
    print("mask step overhead ...", flush=True)
    result["overhead_detail"] = overhead(fx, pairs=5, images=OVERHEAD_IMAGES)
    result["mask_step_overhead"] = result["overhead_detail"]["median_ratio"]
    if overhead_only:
        result = {**json.loads(out_path.read_text()), **result}
        result["targets"]["mask_step_overhead<=1.3"] = result["mask_step_overhead"] <= 1.3
        result["overhead_seconds"] = round(time.perf_counter() - start, 1)
        return _write(result, out_path)
    print("peak RSS by tasks ...", flush=True)
    result["peak_rss_mb_by_tasks"] = rss_by_tasks(fx, [2, 4, 8])
    print("peak RSS by images per epoch ...", flush=True)
    result["peak_rss_mb_by_images_per_epoch"] = rss_by_images(fx, [64, 256, 1024])
    print("a default job (T=4, 10 epochs) ...", flush=True)
    job = stages(fx, tasks=4, epochs=10)
    result.update(stage_seconds=job["stage_seconds"], lr_search_share=job["lr_search_share"],
                  default_job=job)
    result["cuda"] = cuda_section(quick)
    result["targets"] = {
        "mask_step_overhead<=1.3": result["mask_step_overhead"] <= 1.3,
        "rss_by_tasks_flat<=1.25": flat(result["peak_rss_mb_by_tasks"]) <= 1.25,
        "rss_by_images_flat<=1.25": flat(result["peak_rss_mb_by_images_per_epoch"]) <= 1.25,
        "lr_search_share<=0.25": result["lr_search_share"] <= 0.25,
    }
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    return _write(result, out_path)


def _write(result: dict[str, Any], out_path: Path) -> dict[str, Any]:
    print_table(result)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2, sort_keys=True))
    print(f"wrote {out_path}")
    return result


def print_table(r: dict[str, Any]) -> None:
    rows = [
        ("mask_step_overhead (median of pairs)", f"{r['mask_step_overhead']:.3f}"),
        ("peak_rss_mb_by_tasks", _fmt(r["peak_rss_mb_by_tasks"])),
        ("  max/min", f"{flat(r['peak_rss_mb_by_tasks']):.3f}"),
        ("peak_rss_mb_by_images_per_epoch", _fmt(r["peak_rss_mb_by_images_per_epoch"])),
        ("  max/min", f"{flat(r['peak_rss_mb_by_images_per_epoch']):.3f}"),
        ("lr_search_share", f"{r['lr_search_share']:.3f}"),
        ("stage_seconds (T=4, 10 epochs)", _fmt(r["stage_seconds"])),
    ]
    if r.get("cuda"):
        for p in ("bf16", "fp32"):
            c = r["cuda"][p]
            rows.append((f"CUDA {p}: job s / peak GPU MB",
                         f"{c['job_seconds']:.0f} / {c['peak_gpu_mb']:.0f}"))
    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print("targets:", json.dumps(r["targets"]))


def _fmt(d: dict[str, float]) -> str:
    return ", ".join(f"{k}: {v:.1f}" for k, v in d.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="112 px on the CPU (minutes on 2 cores)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--overhead-only", action="store_true",
                   help="measure only mask_step_overhead and update the JSON at --out")
    a = p.parse_args(argv)
    run(a.quick, a.out, a.overhead_only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

