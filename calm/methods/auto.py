"""`method: "auto"`: run a set of candidate merges on one loaded context (one load of the data,
one pseudo-label pass), score each on the held-out share of the pseudo-labelled samples, and
return the best. Every candidate's score — and, when eval data is given, its test accuracy — goes
into the method's info (report.json, model card, report.html); test labels never choose.

Memory: one candidate's merged model is on the device at a time; the best so far waits on the
host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from calm.auto_options import AutoOptions
from calm.context import MergeContext
from calm.methods.base import MethodOutput
from calm.task_vectors import Params, add


@dataclass
class _Best:
    score: float
    name: str
    output: MethodOutput  # tau on the host


def auto(ctx: MergeContext, opts: AutoOptions) -> MethodOutput:
    from calm.methods import method_function
    from calm.pipeline import candidate_costs

    costs = candidate_costs(opts, len(ctx.tasks))
    total, done = sum(costs.values()), 0.0
    table: dict[str, dict[str, Any]] = {}
    best: _Best | None = None
    for name, cost in costs.items():
        ctx.check_cancel()
        with ctx.sub_window(done / total, (done + cost) / total):
            out = method_function(name)(ctx, opts.options_of(name))
        done += cost
        theta = add(ctx.theta0, out.tau)
        buffers = ctx.merged_buffers(theta)  # once: BatchNorm towers re-estimate them
        agree = ctx.agreement_of(theta, buffers=buffers)
        score = sum(agree.values()) / len(agree)
        accuracy = ctx.test_accuracy(theta, buffers)
        table[name] = {"agreement": score, "agreement_per_task": agree,
                       **({"test_accuracy": sum(accuracy.values()) / len(accuracy),
                           "test_accuracy_per_task": accuracy} if accuracy else {}),
                       "settings": out.info}
        if best is None or score > best.score + 1e-9:  # ties: the earlier candidate
            host: Params = {k: v.cpu() for k, v in out.tau.items()}
            masks = {t: {k: m.cpu() for k, m in per.items()} for t, per in out.masks.items()}
            best = _Best(score, name, MethodOutput(host, masks, out.info))
        del out, theta, buffers
        ctx.report("auto", done / total, f"{name}: held-out agreement {score:.4f}",
                   {"agreement": score}, force=True)
    assert best is not None
    tau = {k: v.to(ctx.device) for k, v in best.output.tau.items()}
    return MethodOutput(tau, best.output.masks, {
        "chosen": best.name, "chosen_by": "held-out pseudo-label agreement (no test labels)",
        "candidates": table, "chosen_settings": best.output.info})
