"""How hard is a suite? Zero-shot, individual and task-arithmetic test accuracy per task, with the
merged model's float buffers (BatchNorm running statistics) taken from the base or averaged over
the tasks. Plain torch, independent of calm's merge code (every model runs with a full state dict):

    python -m bench.suite_check --suite photos [--size bench] [--out PATH]

Task arithmetic: θ0 + λ·Σ_t τ_t over the image tower's float parameters, λ chosen from a grid by
mean agreement with the individual models' pseudo-labels on the unlabeled splits (no test label).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import load_file

from bench.digits_suite import Suite
from bench.suites import SIZES, build_suite, suite_names
from calm.checkpoints import load_state_dict
from calm.heads import logits, zero_shot_head

GRID = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5, 2.0]
State = dict[str, torch.Tensor]


@torch.no_grad()
def predict(model: torch.nn.Module, state: State, head: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Predicted classes [N] of images [N, 3, H, W] with every tensor of `state` (buffers too)."""
    model.load_state_dict(state)
    model.eval()
    return torch.cat([logits(model.encode_image(x), head).argmax(1) for x in images.split(256)])


def merged_state(base: State, tasks: list[State], lam: float, params: set[str], buffers: str) -> State:
    """θ0 + λ·Στ on the visual float parameters; float visual buffers from the base or averaged."""
    out = dict(base)
    for k in params:
        if k.startswith("visual."):
            out[k] = base[k] + lam * sum(t[k] - base[k] for t in tasks)
    if buffers == "average":
        for k, v in base.items():
            if k.startswith("visual.") and k not in params and v.is_floating_point():
                out[k] = sum(t[k] for t in tasks) / len(tasks)
    return out


def check(suite: Suite, grid: list[float] = GRID) -> dict[str, Any]:
    model = open_clip.create_model(suite.arch)
    params = {k for k, _ in model.named_parameters()}
    base = load_state_dict(suite.base)
    model.load_state_dict(base)
    model.eval()
    names = [t.name for t in suite.tasks]
    heads = {t.name: zero_shot_head(model, suite.arch, t.classnames, t.templates) for t in suite.tasks}
    states = [load_state_dict(t.checkpoint) for t in suite.tasks]
    unlabeled = {t.name: load_file(str(t.unlabeled))["images"] for t in suite.tasks}
    tests = {t.name: load_file(str(t.test)) for t in suite.tasks}

    def test_acc(state: State) -> dict[str, float]:
        return {n: float((predict(model, state, heads[n], tests[n]["images"]) == tests[n]["labels"])
                         .float().mean()) for n in names}

    report: dict[str, Any] = {"zero_shot": test_acc(base)}
    report["individual"] = {n: test_acc(s)[n] for n, s in zip(names, states, strict=True)}
    pseudo = {n: predict(model, s, heads[n], unlabeled[n]) for n, s in zip(names, states, strict=True)}
    for buffers in ("base", "average"):
        scores = {}
        for lam in grid:
            state = merged_state(base, states, lam, params, buffers)
            scores[lam] = sum(float((predict(model, state, heads[n], unlabeled[n]) == pseudo[n])
                                    .float().mean()) for n in names) / len(names)
        lam = max(grid, key=lambda v: scores[v])
        acc = test_acc(merged_state(base, states, lam, params, buffers))
        report[f"task_arithmetic_{buffers}_buffers"] = {**acc, "lambda": lam}
    return report


def _print(report: dict[str, Any], names: list[str]) -> None:
    ind = report["individual"]
    print(f"{'':<30}" + "".join(f"{n[:12]:>13}" for n in names) + f"{'avg':>8}{'norm':>7}")
    for label, acc in report.items():
        avg = sum(acc[n] for n in names) / len(names)
        norm = sum(acc[n] / ind[n] for n in names) / len(names)
        lam = f"  λ={acc['lambda']:g}" if "lambda" in acc else ""
        print(f"{label:<30}" + "".join(f"{100 * acc[n]:13.1f}" for n in names)
              + f"{100 * avg:8.1f}{norm:7.3f}{lam}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", choices=suite_names(), default="photos")
    p.add_argument("--size", choices=SIZES, default="bench")
    p.add_argument("--cache", type=Path, default=Path("bench/cache"))
    p.add_argument("--out", type=Path, help="also write the numbers as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    start = time.perf_counter()
    suite = build_suite(args.suite, args.size, args.cache)
    build_s = time.perf_counter() - start
    report = check(suite)
    _print(report, [t.name for t in suite.tasks])
    timings = suite.info.get("timings", {})
    print(f"suite built in {timings.get('total_s')}s (recorded at build); "
          f"this run: load/build {build_s:.1f}s, check {time.perf_counter() - start - build_s:.1f}s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"suite": args.suite, "size": args.size, **report}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
