"""State-dict arithmetic on the image tower: task vectors τ_t = θ_t − θ0, streamed from disk.

Params are dicts `name -> Tensor` over the merged names only (float `visual.*` parameters);
every other tensor of the full state dict stays at θ0.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from calm.checkpoints import check_compatible, load_state_dict

Params = dict[str, torch.Tensor]


def subtract(a: Params, b: Params) -> Params:
    return {k: a[k] - b[k] for k in a}


def add(a: Params, b: Params, scale: float = 1.0) -> Params:
    return {k: a[k] + scale * b[k] for k in a}


def scale(a: Params, s: float) -> Params:
    return {k: s * v for k, v in a.items()}


def zeros_like(a: Params) -> Params:
    return {k: torch.zeros_like(v) for k, v in a.items()}


def numel(a: Params) -> int:
    return sum(v.numel() for v in a.values())


def select(state: dict[str, torch.Tensor], names: list[str], device: torch.device) -> Params:
    """The merged tensors of a full state dict, as float32 on `device`."""
    return {n: state[n].to(device=device, dtype=torch.float32) for n in names}


@dataclass
class TaskVectorSource:
    """Task vectors computed on demand from checkpoints on disk (one in memory at a time).

    base_state is the full pretrained state dict (for compatibility checks); theta0 holds the
    merged tensors on the compute device.
    """

    base_state: dict[str, torch.Tensor]
    theta0: Params
    paths: dict[str, Path]  # task name -> fine-tuned checkpoint
    device: torch.device
    _checked: set[str] = field(default_factory=set)

    @property
    def names(self) -> list[str]:
        return list(self.paths)

    def get(self, task: str) -> Params:
        """τ_task on the compute device (validated against the base on first load)."""
        state = load_state_dict(self.paths[task])
        if task not in self._checked:
            check_compatible(self.base_state, state, task)
            self._checked.add(task)
        return subtract(select(state, list(self.theta0), self.device), self.theta0)

    def iter(self, tasks: list[str] | None = None) -> Iterator[tuple[str, Params]]:
        for task in tasks if tasks is not None else self.names:
            yield task, self.get(task)

    def stream_sum(self, tasks: list[str]) -> Params:
        """Σ_t τ_t with one checkpoint in memory at a time."""
        total = zeros_like(self.theta0)
        for _, tau in self.iter(tasks):
            for k, v in tau.items():
                total[k] += v
            del tau
        return total
