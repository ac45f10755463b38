"""Merge-quality benchmark on real data, one command per suite:

    python -m bench.merge_quality --suite digits [--out bench/results/merge_quality_digits.json]
    python -m bench.merge_quality --list-suites

Builds (or loads from cache) the suite (bench.suites: e.g. 'digits', a tiny CLIP pretrained
contrastively on digit captions, or 'photos', a BatchNorm ResNet tower on scikit-image photos; one
fine-tuned image tower per task) — then merges it with every method and prints
per-task TEST accuracy, the average, the normalized accuracy (merged / individual) and the wall
time of each stage. Every setting is chosen without test labels (pseudo-labels on the unlabeled
split). It also reports two controls with CALM's exact per-step mask sizes (a random mask and a
largest-|τ| mask) and the sensitivity of CALM to its mask learning rate.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from bench.quality_controls import replay_calm_plan
from bench.quality_runner import Runner, table
from bench.suites import build_suite, suite_names
from calm.loading import load_context, pseudo_label_pass
from calm.registry import REGISTRY
from calm.run_options import RunOptions
from calm.spec import CalmOptions, MergeSpec

RESULTS_DIR = Path("bench/results")
BASELINES = ("average", "task_arithmetic", "ties", "tsv_m", "iso_c", "iso_cts")
SENSITIVITY = (0.1, 0.3, 1.0, 3.0, 10.0)  # x the lr the default job chose


def default_out(suite: str) -> Path:
    """bench/results/merge_quality_<suite>.json"""
    return RESULTS_DIR / f"merge_quality_{suite}.json"


def run(out_path: Path, cache_dir: Path, size: str, sensitivity: bool,
        suite_name: str = "digits") -> dict[str, Any]:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    start = time.perf_counter()
    suite = build_suite(suite_name, size, cache_dir)
    spec = MergeSpec.model_validate(suite.merge_spec("calm"))
    loaded = load_context(spec, RunOptions(device="cpu"), {})
    pseudo_label_pass(loaded, CalmOptions())
    ctx, tasks = loaded.ctx, [t.name for t in spec.tasks]
    runner = Runner(loaded)
    print(f"{suite_name}: {len(tasks)} tasks, individual avg "
          f"{100 * sum(loaded.accuracy['individual'].values()) / len(tasks):.1f}", flush=True)
    for name in BASELINES:
        runner.method(name, name, {})
    calm = runner.method("calm", "calm", {})  # the library's defaults, nothing overridden
    for control in ("random", "largest_tau"):
        runner.add(f"calm:{control}_mask", lambda c=control: replay_calm_plan(ctx, calm, c, spec.seed))
    if "auto" in REGISTRY:
        runner.method("auto", "auto", {})
    if sensitivity:
        _sensitivity(runner, calm.info, len(tasks))
    runner.finish()
    report = {
        "suite": {"name": suite_name, "size": size, "root": str(suite.root), "arch": suite.arch,
                  "tasks": tasks, "build_timings": suite.info.get("timings")},
        "methods": runner.results,
        "calm_label": "calm",
        "targets": targets(runner.results),
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    print()
    print(table(runner.results, tasks))
    print("\ntargets:", json.dumps(report["targets"]))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2, sort_keys=True))
    out_path.with_suffix(".txt").write_text(table(runner.results, tasks) + "\n\ntargets: "
                                            + json.dumps(report["targets"]) + "\n")
    print(f"wrote {out_path}")
    return report


def _sensitivity(runner: Runner, info: dict[str, Any], t: int) -> None:
    """Each plan (efficient K=2, fully sequential K=T-1) at fixed relative lrs x0.1 ... x10 the
    one the default job chose (no search: lr_grid of one value)."""
    chosen = next(iter(info["steps"].values()))["lr_relative"]
    for k in sorted({min(2, t - 1), t - 1}):
        for mult in SENSITIVITY:
            runner.method(f"sens:K={k}:lr x{mult:g}", "calm",
                          {"num_sequential": k, "lr_grid": [chosen * mult]})


def targets(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    calm = results["calm"]
    best_baseline = max(results[k]["average"] for k in ("task_arithmetic", "ties"))
    step = next(iter(calm["info"]["steps"].values()))
    scores = sorted(float(r) for r in step.get("lr_scores", {}))
    out = {
        "calm_normalized": round(calm["normalized"], 4),
        "calm_minus_best_of_ta_ties_pts": round(100 * (calm["average"] - best_baseline), 2),
        "calm_plan": calm["info"].get("plan"),
        "chosen_lr_relative": step.get("lr_relative"),
        "lr_screened": scores,
        "met_normalized_0.92": bool(calm["normalized"] >= 0.92),
        "met_10pts_over_ta_and_ties": bool(calm["average"] - best_baseline >= 0.10),
        "met_lr_not_at_grid_edge": bool(scores and scores[0] < step["lr_relative"] < scores[-1]),
        "task_arithmetic_normalized": round(results["task_arithmetic"]["normalized"], 4),
    }
    if "auto" in results:
        candidates = [k for k in results if k in (*BASELINES, "calm")]
        best = max(results[k]["average"] for k in candidates)
        out["auto_minus_best_candidate_pts"] = round(100 * (results["auto"]["average"] - best), 2)
        out["met_auto_within_1pt"] = bool(best - results["auto"]["average"] <= 0.01)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", choices=suite_names(), default="digits", help="the task suite")
    p.add_argument("--list-suites", action="store_true", help="print the suite names and exit")
    p.add_argument("--out", type=Path, help="default: bench/results/merge_quality_<suite>.json")
    p.add_argument("--cache", type=Path, default=Path("bench/cache"))
    p.add_argument("--size", choices=["bench", "test"], default="bench")
    p.add_argument("--sensitivity", action="store_true",
                   help="also run each plan at fixed lrs x0.1 ... x10 the chosen one (long)")
    args = p.parse_args(argv)
    if args.list_suites:
        print("\n".join(suite_names()))
        return 0
    start = time.perf_counter()
    out = args.out or default_out(args.suite)
    run(out, args.cache, args.size, args.sensitivity, args.suite)
    print(f"total wall time {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
