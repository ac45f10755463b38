"""CALM's plan, without torch: which K values run, how the tasks split into the base group G0
and the sequential tasks, what a plan costs, and a sentence a person can check before a merge.

The rules live here once; calm.methods.calm_method runs them, `calm-merge validate` and
`POST /v1/merges` (dry_run) describe them.

- K tasks are mask-merged in turn after a base group G0 of the other T−K (1 ≤ K ≤ T−1).
- A base group of at most two tasks runs fully sequential (the reference code does): its first
  task enters at full strength and every other task is mask-merged, so K is then T−1.
- `num_sequential: "auto"` runs the efficient plan (K=2) and the fully sequential one (K=T−1)
  and keeps the better on held-out pseudo-labels; for T ≤ 4 they are the same plan.
- Unnamed sequential tasks are the ones the all-task merge serves worst (ranked at run time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from calm.calm_options import CalmOptions

MAX_FULLY_SEQUENTIAL_BASE = 2  # a base group this small runs fully sequential
AUTO_EFFICIENT_K = 2


def plan_sizes(opts: CalmOptions, t: int) -> list[int]:
    """The K values to run: the user's, or for 'auto' K=2 and K=T−1 (one when they coincide)."""
    if opts.sequential_tasks is not None:
        return [len(opts.sequential_tasks)]
    if opts.num_sequential != "auto":
        return [opts.num_sequential]
    return [t - 1] if t - AUTO_EFFICIENT_K <= MAX_FULLY_SEQUENTIAL_BASE else [AUTO_EFFICIENT_K, t - 1]


def split(names: list[str], seq: list[str]) -> tuple[list[str], list[str], str]:
    """-> (base group G0, ordered sequential tasks, plan name) once the K sequential tasks
    `seq` are known. With |G0| ≤ 2 the plan is fully sequential: G0's first task enters at
    full strength, the rest of G0 is mask-merged before `seq`."""
    g0 = [n for n in names if n not in seq]
    if len(g0) <= MAX_FULLY_SEQUENTIAL_BASE:
        return g0[:1], g0[1:] + list(seq), "fully_sequential"
    return g0, list(seq), "efficient"


def plan_cost(t: int, k: int) -> float:
    """Mask cost of a plan in task-epochs per epoch: Σ over steps of the tasks seen."""
    g0 = t - k
    if g0 <= MAX_FULLY_SEQUENTIAL_BASE:
        return float(sum(range(2, t + 1)))
    return float(sum(range(g0 + 1, t + 1)))


def check_plan(opts: CalmOptions, names: list[str]) -> None:
    """K and the named sequential tasks must fit the T tasks (OptionError otherwise)."""
    from calm.options import OptionError

    t = len(names)
    if opts.sequential_tasks is not None:
        seq = opts.sequential_tasks
        unknown = sorted(set(seq) - set(names))
        if unknown:
            raise OptionError("sequential_tasks", f"names unknown tasks {unknown}; the tasks are {names}")
        if len(set(seq)) != len(seq):
            raise OptionError("sequential_tasks", "lists a task twice")
        if not 1 <= len(seq) <= t - 1:
            raise OptionError("sequential_tasks", f"must name 1 to {t - 1} of the {t} tasks (one task "
                              "at least stays in the base group)")
        if opts.num_sequential not in ("auto", len(seq)):
            raise OptionError("num_sequential", f"{opts.num_sequential} disagrees with the {len(seq)} "
                              "sequential_tasks named; leave it 'auto'")
    elif opts.num_sequential != "auto" and not 1 <= opts.num_sequential <= t - 1:
        raise OptionError("num_sequential", f"must be between 1 and T−1 = {t - 1} for {t} tasks "
                          f"(got {opts.num_sequential}), or 'auto'")


def _lambda_text(opts: CalmOptions) -> str:
    if opts.base_lambda == "auto":
        return f"λ chosen from {len(opts.lambda_grid)} values on held-out pseudo-labels"
    return f"λ = {opts.base_lambda:g}"


def describe_one(opts: CalmOptions, names: list[str], k: int) -> str:
    """One plan in words, e.g. 'fully sequential K=2: base t0 at full strength, then masks for
    t1, t2'."""
    t, named = len(names), opts.sequential_tasks
    if named is not None:
        g0, seq, kind = split(names, list(named))
        if kind == "fully_sequential":
            return (f"fully sequential K={t - 1}: base {g0[0]} at full strength, then masks for "
                    f"{', '.join(seq)}")
        return (f"efficient K={k}: base group {', '.join(g0)} by task arithmetic ({_lambda_text(opts)}), "
                f"then masks for {', '.join(seq)}")
    if k == t - 1:
        return (f"fully sequential K={k}: the task the all-task merge serves best at full strength, "
                "then a mask for each other task, worst served first")
    if t - k <= MAX_FULLY_SEQUENTIAL_BASE:
        return (f"fully sequential K={t - 1}: the first of the {t - k} other tasks at full strength, "
                f"a mask for the other, then masks for the {k} the all-task merge serves worst")
    return (f"efficient K={k}: base group of {t - k} tasks by task arithmetic ({_lambda_text(opts)}), "
            f"then masks for the {k} tasks it serves worst (ranked at run time)")


def describe(opts: CalmOptions, names: list[str]) -> list[str]:
    """The plan(s) a CALM merge of these tasks will run, in words (first line: the choice)."""
    t, sizes = len(names), plan_sizes(opts, len(names))
    lines = [describe_one(opts, names, k) for k in sizes]
    if len(sizes) > 1:
        head = (f"auto: efficient K={sizes[0]} and fully sequential K={sizes[1]}, the better on "
                "held-out pseudo-labels")
        lines = [head, *(f"  {line}" for line in lines)]
    elif t - sizes[0] <= MAX_FULLY_SEQUENTIAL_BASE and sizes[0] < t - 1:
        lines.append(f"  (K={sizes[0]} leaves a base group of {t - sizes[0]} tasks; a base group of "
                     f"≤ {MAX_FULLY_SEQUENTIAL_BASE} runs fully sequential, so {t - 1} tasks get masks)")
    lr = "auto (relative rate chosen on held-out pseudo-labels)" if opts.lr == "auto" else f"{opts.lr:g}"
    lines.append(f"masks: {opts.epochs} epochs, lr {lr}, {opts.regularizer} regularizer")
    return lines
