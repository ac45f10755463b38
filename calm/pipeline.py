"""The library's one entry point: `merge(spec, on_progress, should_cancel) -> MergeResult`."""

from __future__ import annotations

import time
from typing import Any

import torch
from pydantic import ValidationError

from calm.errors import CalmError
from calm.evaluate import evaluate, summarize
from calm.loading import Loaded, load_context, pseudo_label_pass
from calm.methods import METHODS, MethodOutput
from calm.progress import CancelFn, ProgressFn, never_cancel, no_progress
from calm.result import MergeResult
from calm.spec import METHOD_OPTIONS, CalmOptions, MergeSpec
from calm.task_vectors import add

# Overall progress: load 0-5%, pseudo-labels 5-20%, method 20-90% (baselines share it), eval.
WINDOWS = {"load": (0.0, 0.05), "pseudo_labels": (0.05, 0.2), "method": (0.2, 0.9),
           "evaluate": (0.9, 1.0)}


def _options(method: str, raw: dict[str, Any]) -> Any:
    try:
        return METHOD_OPTIONS[method].model_validate(raw)
    except ValidationError as e:
        raise CalmError(f"invalid options for method {method!r}: {e}", code="invalid_options") from e


def _merged_state(loaded: Loaded, tau: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full state dict: merged image tower, every other tensor exactly θ0's (dtype kept)."""
    state = dict(loaded.base_state)
    for name, v in add(loaded.ctx.theta0, tau).items():
        state[name] = v.to(device="cpu", dtype=loaded.base_state[name].dtype).contiguous()
    return state


def _run(loaded: Loaded, method: str, raw_options: dict[str, Any]) -> MethodOutput:
    return METHODS[method](loaded.ctx, _options(method, raw_options))


def merge(spec: MergeSpec, on_progress: ProgressFn | None = None,
          should_cancel: CancelFn | None = None) -> MergeResult:
    """Run the whole merge described by `spec` (see calm.spec). Deterministic on CPU for a
    given spec and seed. Raises CalmError on bad input, MergeCancelled when cancelled."""
    torch.manual_seed(spec.seed)
    timings: dict[str, float] = {}
    progress, cancel = on_progress or no_progress, should_cancel or never_cancel
    opts = _options(spec.method, spec.options)
    pseudo_opts = opts if isinstance(opts, CalmOptions) else CalmOptions()
    t0 = time.perf_counter()
    loaded = load_context(spec, {"on_progress": progress, "should_cancel": cancel})
    ctx = loaded.ctx
    timings["load"] = time.perf_counter() - t0
    ctx.window = WINDOWS["pseudo_labels"]
    pseudo_label_pass(loaded, pseudo_opts)
    timings["pseudo_labels"] = time.perf_counter() - t0 - timings["load"]

    methods = [spec.method, *[b for b in spec.baselines if b != spec.method]]
    outputs: dict[str, MethodOutput] = {}
    lo, hi = WINDOWS["method"]
    for i, name in enumerate(methods):
        ctx.window = (lo + (hi - lo) * i / len(methods), lo + (hi - lo) * (i + 1) / len(methods))
        start = time.perf_counter()
        outputs[name] = _run(loaded, name, spec.options if name == spec.method else {})
        timings[f"method:{name}"] = time.perf_counter() - start

    ctx.window = WINDOWS["evaluate"]
    ctx.report("evaluate", 0.0, "evaluating")
    start = time.perf_counter()
    report = _report(spec, loaded, outputs)
    timings["evaluate"] = time.perf_counter() - start
    report["timings"] = timings
    out = outputs[spec.method]
    ctx.report("done", 1.0, "merge finished")
    return MergeResult(_merged_state(loaded, out.tau), out.masks, report)


def _report(spec: MergeSpec, loaded: Loaded, outputs: dict[str, MethodOutput]) -> dict[str, Any]:
    ctx = loaded.ctx
    table = dict(loaded.accuracy)
    agreement = {}
    for name, out in outputs.items():
        kind = "merged" if name == spec.method else name
        agreement[kind] = ctx.agreement(out.tau)
        if loaded.eval_sets:
            table[kind] = evaluate(ctx.visual, add(ctx.theta0, out.tau), loaded.eval_sets,
                                   ctx.batch_size, ctx.bf16)
    main = outputs[spec.method]
    return {
        "method": spec.method,
        "arch": spec.model.arch,
        "seed": spec.seed,
        "device": str(ctx.device),
        "tasks": [t.name for t in spec.tasks],
        "accuracy": table,
        "samples": {n: int(s.labels.numel()) for n, s in loaded.eval_sets.items()},
        **summarize(table),
        "pseudo_label_agreement": agreement,
        "pseudo_labels": {n: {"unlabeled": int(t.unlabeled.shape[0]),
                              "selected": int(t.pseudo.selected.numel()) if t.pseudo else 0}
                          for n, t in ctx.tasks.items()},
        "method_info": main.info,
        "baselines_info": {n: o.info for n, o in outputs.items() if n != spec.method},
        "mask_density": {t: sum(int(m.sum()) for m in per.values())
                         / max(1, sum(m.numel() for m in per.values()))
                         for t, per in main.masks.items()},
    }
