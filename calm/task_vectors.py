"""State-dict arithmetic on the image tower, and the model pool: task vectors τ_t = θ_t − θ0.

Params are dicts `name -> Tensor` over the merged names only (float `visual.*` parameters);
every other tensor of the full state dict stays at θ0. Float buffers (BatchNorm running
statistics) are not merged arithmetically: each checkpoint's own are kept beside its vector.

Each user checkpoint is read once per job: the first read validates it against the base,
computes τ_t on the compute device and spills τ_t (fp32, safetensors) to a scratch folder; every
later use reads the spill, which is a plain local tensor file.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

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
    """The named tensors of a full state dict, as float32 on `device`."""
    return {n: state[n].to(device=device, dtype=torch.float32) for n in names}


@dataclass
class TaskVectorSource:
    """Task vectors of fine-tuned checkpoints, one in memory at a time.

    base_state is the full pretrained state dict (CPU, for compatibility checks); theta0 holds
    the merged tensors on the compute device; buffer_names are the float buffers each
    checkpoint keeps for itself.
    """

    base_state: dict[str, torch.Tensor]
    theta0: Params
    paths: dict[str, Path]  # task name -> fine-tuned checkpoint
    device: torch.device
    buffer_names: list[str] = field(default_factory=list)
    reads: Counter[str] = field(default_factory=Counter)  # task -> reads of its checkpoint
    total: Params | None = None  # Σ over every task, once the first pass has summed it
    _buffers: dict[str, Params] = field(default_factory=dict)
    _spill: Path | None = None

    @property
    def names(self) -> list[str]:
        return list(self.paths)

    def read(self, task: str) -> Params:
        """τ_task from the user's checkpoint (validated), its own float buffers kept, and the
        vector spilled so that later uses never read the checkpoint again."""
        state = load_state_dict(self.paths[task])
        self.reads[task] += 1
        if self.reads[task] == 1:
            check_compatible(self.base_state, state, task)
        self._buffers[task] = select(state, self.buffer_names, self.device)
        tau = subtract(select(state, list(self.theta0), self.device), self.theta0)
        del state
        save_file({k: v.detach().cpu().contiguous() for k, v in tau.items()},
                  str(self._spill_path(task)))
        return tau

    def get(self, task: str) -> Params:
        """τ_task on the compute device."""
        path = self._spill_path(task)
        if not path.is_file():
            return self.read(task)
        return load_file(str(path), device=str(self.device))

    def buffers(self, task: str) -> Params:
        """The task checkpoint's own float buffers (empty for towers without any)."""
        if task not in self._buffers:
            self.get(task)
        return self._buffers[task]

    def iter(self, tasks: list[str] | None = None) -> Iterator[tuple[str, Params]]:
        for task in tasks if tasks is not None else self.names:
            yield task, self.get(task)

    def stream_sum(self, tasks: list[str]) -> Params:
        """Σ_t τ_t with one task vector in memory at a time (the all-task sum is cached)."""
        if self.total is not None and sorted(tasks) == sorted(self.names):
            return {k: v.clone() for k, v in self.total.items()}
        total = zeros_like(self.theta0)
        for _, tau in self.iter(tasks):
            for k, v in tau.items():
                total[k] += v
            del tau
        return total

    def _spill_path(self, task: str) -> Path:
        if self._spill is None:
            self._spill = Path(tempfile.mkdtemp(prefix="calm-task-vectors-"))
        return self._spill / f"{list(self.paths).index(task)}.safetensors"

    def close(self) -> None:
        """Remove the spilled vectors."""
        if self._spill is not None:
            shutil.rmtree(self._spill, ignore_errors=True)
            self._spill = None

    def __del__(self) -> None:
        self.close()
