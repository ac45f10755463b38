"""Top-1 accuracy on labelled eval data, and the report's summary numbers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from calm.forward import accuracy, predict_logits
from calm.images import HostImages
from calm.task_vectors import Params


@dataclass
class EvalSet:
    images: HostImages  # [N, 3, H, W] on the host, streamed in batches
    labels: torch.Tensor  # [N] int64
    head: torch.Tensor  # [C, D]


def evaluate(visual: torch.nn.Module, params: Params, sets: dict[str, EvalSet],
             batch_size: int = 256, bf16: bool = False) -> dict[str, float]:
    """Per task: top-1 accuracy of the image tower run with `params` (full θ and buffers)."""
    return {
        name: accuracy(predict_logits(visual, params, s.images, s.head, batch_size, bf16), s.labels)
        for name, s in sets.items()
    }


def summarize(accuracy_table: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """-> {"average": {kind: mean acc}, "normalized": {kind: mean_t acc_t / individual_t}}."""
    average = {k: sum(v.values()) / len(v) for k, v in accuracy_table.items() if v}
    individual = accuracy_table.get("individual", {})
    normalized = {}
    if individual:
        for kind, per_task in accuracy_table.items():
            ratios = [per_task[t] / individual[t] for t in per_task if individual.get(t)]
            if ratios:
                normalized[kind] = sum(ratios) / len(ratios)
    return {"average": average, "normalized": normalized}
