"""The library's one entry point: `merge(spec, run=, on_progress=, should_cancel=) -> MergeResult`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from calm.auto_options import AutoOptions
from calm.evaluate import summarize
from calm.loading import Loaded, load_context, pseudo_label_pass
from calm.mask_density import mask_density
from calm.methods import MethodOutput, method_function
from calm.options import MethodOptions
from calm.plan import plan_cost, plan_sizes
from calm.progress import CancelFn, Progress, ProgressFn, never_cancel, no_progress
from calm.registry import default_options
from calm.result import MergeResult
from calm.run_options import RunOptions
from calm.spec import CalmOptions, MergeSpec
from calm.task_vectors import Params, add


def _options(spec: MergeSpec, method: str) -> MethodOptions:
    """The spec's options for its method, the defaults for a baseline."""
    return spec.options if method == spec.method else default_options(method)


def _merged_state(loaded: Loaded, theta: Params, buffers: Params) -> dict[str, torch.Tensor]:
    """Full state dict: merged image tower (parameters and float buffers), every other tensor
    exactly θ0's (dtype kept)."""
    state = dict(loaded.base_state)
    for name, v in {**theta, **buffers}.items():
        state[name] = v.to(device="cpu", dtype=loaded.base_state[name].dtype).contiguous()
    return state


def _run(loaded: Loaded, spec: MergeSpec, method: str) -> MethodOutput:
    return method_function(method)(loaded.ctx, _options(spec, method))


@contextmanager
def _tf32(device: torch.device) -> Iterator[None]:
    """TF32 matmuls/convolutions on CUDA for the duration of a merge."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def merge(spec: MergeSpec, *, run: RunOptions | None = None, on_progress: ProgressFn | None = None,
          should_cancel: CancelFn | None = None) -> MergeResult:
    """Run the whole merge described by `spec` (what: calm.spec) the way `run` says (how:
    calm.run_options; default: a MergeRequest's `run`, else RunOptions()). Deterministic on CPU
    for a given spec and seed. Raises CalmError on bad input, MergeCancelled when cancelled."""
    run = run if run is not None else getattr(spec, "run", None) or RunOptions()
    torch.manual_seed(spec.seed)
    progress, cancel = on_progress or no_progress, should_cancel or never_cancel
    pseudo_opts = pseudo_label_options(spec.options)
    t0 = time.perf_counter()
    progress(Progress("load", 0.0, "loading the base model, heads and data"))
    loaded = load_context(spec, run, {
        "on_progress": progress, "should_cancel": cancel, "buffer_policy": spec.buffers,
        "micro_batch_size": run.micro_batch(),
    })
    ctx = loaded.ctx
    try:
        with _tf32(ctx.device):
            return _merge_loaded(spec, loaded, pseudo_opts, {"load": time.perf_counter() - t0})
    finally:
        ctx.vectors.close()


def _merge_loaded(spec: MergeSpec, loaded: Loaded, pseudo_opts: CalmOptions,
                  timings: dict[str, float]) -> MergeResult:
    ctx = loaded.ctx
    methods = spec.methods()
    windows = progress_windows(spec, methods)
    start = time.perf_counter()
    ctx.window = windows["pseudo_labels"]
    pseudo_label_pass(loaded, pseudo_opts)
    timings["pseudo_labels"] = time.perf_counter() - start
    scored: dict[str, Scored] = {}
    state: dict[str, torch.Tensor] = {}
    for name in methods:  # one merged model in memory at a time
        ctx.window = windows[f"method:{name}"]
        start = time.perf_counter()
        out = _run(loaded, spec, name)
        timings[f"method:{name}"] = time.perf_counter() - start
        ctx.window = windows[f"evaluate:{name}"]
        ctx.report("evaluate", 0.0, f"evaluating {name}", force=True)
        start = time.perf_counter()
        theta = add(ctx.theta0, out.tau)
        out.tau = {}
        buffers = ctx.merged_buffers(theta)
        scored[name] = _score(loaded, out, theta, buffers)
        if name == spec.method:
            state = _merged_state(loaded, theta, buffers)
        del theta, buffers
        timings[f"evaluate:{name}"] = time.perf_counter() - start
    report = _report(spec, loaded, scored)
    report["timings"] = timings
    report["checkpoint_reads"] = dict(ctx.vectors.reads)
    ctx.window = (0.0, 1.0)
    ctx.report("merged", 1.0, "merge finished", force=True)
    return MergeResult(state, scored[spec.method].output.masks, report)


@dataclass
class Scored:
    output: MethodOutput  # its tau dropped once scored
    agreement: dict[str, float]  # held-out pseudo-label agreement per task
    accuracy: dict[str, float] | None  # eval accuracy per task, when eval data was given


def _score(loaded: Loaded, out: MethodOutput, theta: Params, buffers: Params) -> Scored:
    ctx = loaded.ctx
    return Scored(out, ctx.agreement_of(theta, buffers=buffers), ctx.test_accuracy(theta, buffers))


def progress_windows(spec: MergeSpec, methods: list[str]) -> dict[str, tuple[float, float]]:
    """Overall progress split by expected cost, so the bar moves evenly: pseudo-labels and
    evaluation ∝ forward passes, each method by its own estimate (CALM's mask epochs dominate)."""
    t = len(spec.tasks)
    costs = {"pseudo_labels": 1.0 * t}
    for name in methods:
        costs[f"method:{name}"] = method_cost(name, _options(spec, name), t)
        costs[f"evaluate:{name}"] = 0.2 * t + (0.5 * t if spec.evaluate else 0.0)
    total = sum(costs.values())
    out, lo = {}, 0.0
    for key, c in costs.items():
        out[key] = (lo, lo + c / total)
        lo += c / total
    return out


def candidate_costs(opts: AutoOptions, t: int) -> dict[str, float]:
    """`auto`'s candidates' costs: each method and its held-out scoring."""
    return {n: method_cost(n, opts.options_of(n), t) + 0.2 * t for n in opts.candidates}


def pseudo_label_options(opts: MethodOptions) -> CalmOptions:
    """The pseudo-label settings (ratio, class balance, held-out share): CALM's options when CALM
    runs (alone or as an auto candidate), else CALM's defaults."""
    if isinstance(opts, AutoOptions) and "calm" in opts.candidates:
        opts = opts.options_of("calm")
    return opts if isinstance(opts, CalmOptions) else CalmOptions()


def method_cost(name: str, opts: Any, t: int) -> float:
    """Rough cost in units of one forward pass over every task's unlabeled data."""
    if isinstance(opts, AutoOptions):
        return sum(candidate_costs(opts, t).values())
    if isinstance(opts, CalmOptions):
        per_epoch = opts.batches_per_task * 3.0 / 8  # fwd+bwd of 2 batches ≈ 3/8 of a pass
        mask = sum(plan_cost(t, k) for k in plan_sizes(opts, t)) * opts.epochs * per_epoch / t
        return mask + len(opts.lambda_grid)
    return 1.0 + len(getattr(opts, "scaling_grid", ()))


def _report(spec: MergeSpec, loaded: Loaded, scored: dict[str, Scored]) -> dict[str, Any]:
    ctx = loaded.ctx
    table = dict(loaded.accuracy)
    agreement = {}
    for name, sc in scored.items():
        kind = "merged" if name == spec.method else name
        agreement[kind] = sc.agreement
        if sc.accuracy is not None:
            table[kind] = sc.accuracy
    main = scored[spec.method].output
    return {
        "method": spec.method,
        "arch": spec.model.arch,
        "seed": spec.seed,
        "device": str(ctx.device),
        "precision": "bf16" if ctx.bf16 else "fp32",
        "micro_batch_size": ctx.micro_batch_size,
        "buffers": ctx.resolved_buffer_policy() if ctx.has_buffers else "none",
        "tasks": [t.name for t in spec.tasks],
        "accuracy": table,
        "samples": {n: int(s.labels.numel()) for n, s in loaded.eval_sets.items()},
        **summarize(table),
        "pseudo_label_agreement": agreement,
        "pseudo_labels": {n: {"unlabeled": len(t.unlabeled),
                              "selected": int(ctx.pseudo(n).selected.numel()),
                              "held_out": int(ctx.pseudo(n).holdout_index.numel())}
                          for n, t in ctx.tasks.items()},
        "method_info": main.info,
        "baselines_info": {n: sc.output.info for n, sc in scored.items() if n != spec.method},
        "mask_density": {t: mask_density(per.values()) for t, per in main.masks.items()},
    }
