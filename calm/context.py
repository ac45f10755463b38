"""Everything a merge method needs, loaded once: θ0, task vectors, heads, unlabeled data,
pseudo-labels, the compute device, progress reporting and cancellation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from calm.errors import MergeCancelled
from calm.forward import predict_logits
from calm.progress import CancelFn, Progress, ProgressFn, never_cancel, no_progress
from calm.pseudo_labels import PseudoLabels
from calm.task_vectors import Params, TaskVectorSource, add


@dataclass
class TaskData:
    name: str
    head: torch.Tensor  # [C, D] on device
    unlabeled: torch.Tensor  # [N, 3, H, W] on device
    pseudo: PseudoLabels | None = None


@dataclass
class MergeContext:
    visual: torch.nn.Module  # the image tower (its own weights are never used for a merge)
    theta0: Params  # merged tensors of the pretrained model, on device
    vectors: TaskVectorSource
    tasks: dict[str, TaskData]
    device: torch.device
    seed: int = 0
    bf16: bool = False
    batch_size: int = 256
    on_progress: ProgressFn = no_progress
    should_cancel: CancelFn = never_cancel
    # overall-progress window [lo, hi] that the running stage reports into
    window: tuple[float, float] = field(default=(0.0, 1.0))

    def report(self, stage: str, frac: float, message: str = "", **metrics: float) -> None:
        lo, hi = self.window
        self.on_progress(Progress(stage, lo + (hi - lo) * min(max(frac, 0.0), 1.0), message, metrics))

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

    def logits(self, params: Params, task: str) -> torch.Tensor:
        """Logits [N, C] of the model θ0 + params-as-given on `task`'s unlabeled inputs."""
        t = self.tasks[task]
        return predict_logits(self.visual, params, t.unlabeled, t.head, self.batch_size, self.bf16)

    def agreement(self, tau: Params, tasks: list[str] | None = None) -> dict[str, float]:
        """Per task: fraction of ALL unlabeled inputs where θ0+τ predicts the pseudo-label."""
        params = add(self.theta0, tau)
        out = {}
        for name in tasks if tasks is not None else list(self.tasks):
            pseudo = self.tasks[name].pseudo
            assert pseudo is not None, "pseudo-labels are computed before any method runs"
            pred = self.logits(params, name).argmax(dim=1).cpu()
            out[name] = float((pred == pseudo.labels).float().mean())
        return out

    def best_scale(self, tau_sum: Params, grid: list[float], tasks: list[str] | None = None) -> float:
        """λ from `grid` maximising mean pseudo-label agreement of θ0 + λ·τ_sum (first best)."""
        best, best_score = grid[0], -1.0
        for i, lam in enumerate(grid):
            self.check_cancel()
            agree = self.agreement({k: lam * v for k, v in tau_sum.items()}, tasks)
            score = sum(agree.values()) / len(agree)
            self.report("scale_search", (i + 1) / len(grid), f"λ={lam:g}", agreement=score)
            if score > best_score + 1e-9:
                best, best_score = lam, score
        return best
