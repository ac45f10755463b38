"""Everything a merge method needs, loaded once: the model pool (θ0, task vectors, buffers),
the task pool (heads, host images, pseudo-labels with their held-out split) and the run hooks
(progress, cancellation)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch

from calm import buffers as bufs
from calm.errors import MergeCancelled
from calm.evaluate import EvalSet, evaluate
from calm.forward import predict_logits
from calm.images import HostImages
from calm.progress import CancelFn, Progress, ProgressFn, never_cancel, no_progress
from calm.pseudo_labels import PseudoLabels
from calm.task_vectors import Params, TaskVectorSource, add

BufferPolicy = Literal["auto", "reestimate", "base", "average"]
Metrics = dict[str, float] | Callable[[], dict[str, float]]
REESTIMATE_PER_TASK = 512  # unlabeled samples per task for BatchNorm re-estimation


@dataclass
class TaskData:
    name: str
    head: torch.Tensor  # [C, D] on device
    unlabeled: HostImages  # [N, 3, H, W] on the host
    pseudo: PseudoLabels | None = None


@dataclass
class MergeContext:
    visual: torch.nn.Module  # the image tower; its own parameters are θ0 (shared storage)
    theta0: Params  # merged tensors of the pretrained model, on device
    vectors: TaskVectorSource
    tasks: dict[str, TaskData]
    device: torch.device
    seed: int = 0
    bf16: bool = False
    batch_size: int = 256  # evaluation batches
    micro_batch_size: int | None = None  # mask-gradient micro-batches (None: probe, "auto")
    buffers0: Params = field(default_factory=dict)  # the base's float buffers
    buffer_policy: BufferPolicy = "auto"
    eval_sets: dict[str, EvalSet] = field(default_factory=dict)  # labelled: report only
    on_progress: ProgressFn = no_progress
    should_cancel: CancelFn = never_cancel
    progress_interval_s: float = 0.5
    # overall-progress window [lo, hi] that the running stage reports into
    window: tuple[float, float] = field(default=(0.0, 1.0))
    _last_report: tuple[str, float] = ("", 0.0)

    def report(self, stage: str, frac: float, message: str = "", metrics: Metrics | None = None,
               force: bool = False) -> None:
        """Progress within the current window; throttled to one report per interval (a new stage
        or a finished one always reports). `metrics` may be a function, called only when the
        report is sent — so device syncs (loss, density) happen only then."""
        now = time.monotonic()
        last_stage, last_t = self._last_report
        if not (force or frac >= 1.0 or stage != last_stage
                or now - last_t >= self.progress_interval_s):
            return
        self._last_report = (stage, now)
        lo, hi = self.window
        values = metrics() if callable(metrics) else dict(metrics or {})
        self.on_progress(Progress(stage, lo + (hi - lo) * min(max(frac, 0.0), 1.0), message, values))

    @contextmanager
    def sub_window(self, a: float, b: float) -> Iterator[None]:
        """Within the block, progress fractions map into [a, b] of the current window."""
        lo, hi = self.window
        self.window = (lo + (hi - lo) * a, lo + (hi - lo) * b)
        try:
            yield
        finally:
            self.window = (lo, hi)

    def check_cancel(self) -> None:
        if self.should_cancel():
            raise MergeCancelled("merge cancelled")

    # --- the task pool -------------------------------------------------------------------
    def pseudo(self, task: str) -> PseudoLabels:
        pseudo = self.tasks[task].pseudo
        assert pseudo is not None, "pseudo-labels are computed before any method runs"
        return pseudo

    def logits(self, params: Params, task: str, index: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [N, C] of the tower run with `params` (θ and buffers, full tensors) on
        `task`'s unlabeled inputs (all, or rows `index`)."""
        t = self.tasks[task]
        return predict_logits(self.visual, params, t.unlabeled, t.head, self.batch_size, self.bf16,
                              index)

    # --- buffers of merged models ----------------------------------------------------------
    @property
    def has_buffers(self) -> bool:
        return bool(self.buffers0)

    def resolved_buffer_policy(self) -> str:
        """'auto' -> 'reestimate' when any task's buffers differ from the base, else 'base'."""
        if self.buffer_policy != "auto":
            return self.buffer_policy
        if not self.has_buffers:
            return "base"
        changed = any(bufs.differ(self.vectors.buffers(t), self.buffers0) for t in self.tasks)
        return "reestimate" if changed else "base"

    def merged_buffers(self, theta: Params, tasks: list[str] | None = None) -> Params:
        """Float buffers for a merged model θ (policy: reestimate on `tasks`' unlabeled data,
        the base's, or the average of the tasks' own)."""
        policy = self.resolved_buffer_policy() if self.has_buffers else "base"
        names = tasks if tasks is not None else list(self.tasks)
        if policy == "base":
            return self.buffers0
        if policy == "average":
            return bufs.average([self.vectors.buffers(t) for t in names])
        gen = torch.Generator().manual_seed(self.seed)
        sources = []
        for t in names:
            n = len(self.tasks[t].unlabeled)
            sources.append((self.tasks[t].unlabeled,
                            torch.randperm(n, generator=gen)[:REESTIMATE_PER_TASK]))
        return bufs.reestimate(self.visual, theta, self.buffers0, sources, self.batch_size,
                               self.device, self.bf16, self.seed)

    # --- held-out agreement ----------------------------------------------------------------
    def agreement_of(self, theta: Params, tasks: list[str] | None = None,
                     buffers: Params | None = None) -> dict[str, float]:
        """Per task: the fraction of its HELD-OUT pseudo-labelled samples on which the merged
        model θ (full parameters) predicts the pseudo-label. `buffers`: θ's merged buffers for
        these tasks when the caller already has them (else computed here)."""
        names = tasks if tasks is not None else list(self.tasks)
        params = {**theta, **(self.merged_buffers(theta, names) if buffers is None else buffers)}
        out = {}
        for name in names:
            pseudo = self.pseudo(name)
            index = pseudo.holdout_index
            pred = self.logits(params, name, index).argmax(dim=1).cpu()
            out[name] = float((pred == pseudo.labels[index]).float().mean())
        return out

    def agreement(self, tau: Params, tasks: list[str] | None = None) -> dict[str, float]:
        """`agreement_of` for θ0 + τ."""
        return self.agreement_of(add(self.theta0, tau), tasks)

    def score(self, tau: Params, tasks: list[str] | None = None) -> float:
        agree = self.agreement(tau, tasks)
        return sum(agree.values()) / len(agree)

    def test_accuracy(self, theta: Params, buffers: Params | None = None) -> dict[str, float] | None:
        """Per task: accuracy on the labelled eval data (None without any). For the report
        only: nothing is ever chosen by it."""
        if not self.eval_sets:
            return None
        buffers = self.merged_buffers(theta) if buffers is None else buffers
        return evaluate(self.visual, {**theta, **buffers}, self.eval_sets, self.batch_size,
                        self.bf16)

    def best_scale(self, tau_sum: Params, grid: list[float], tasks: list[str] | None = None) -> float:
        """λ from `grid` maximising mean held-out agreement of θ0 + λ·τ_sum (first best)."""
        best, best_score = grid[0], -1.0
        for i, lam in enumerate(grid):
            self.check_cancel()
            score = self.score({k: lam * v for k, v in tau_sum.items()}, tasks)
            self.report("scale_search", (i + 1) / len(grid), f"λ={lam:g}", {"agreement": score})
            if score > best_score + 1e-9:
                best, best_score = lam, score
        return best
