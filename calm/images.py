"""Images on the host, in a compact form, moved to the compute device one batch at a time.

Decoded images are kept as raw uint8 pixels `[N, 3, H, W]` (4x smaller than float32) and the
model's normalisation `(x/255 − mean)/std` runs on the device per batch, with exactly the ops of
torchvision's ToTensor + Normalize, so the values are bitwise those of the full transform.
Preprocessed tensor files stay as stored (safetensors files memory-mapped, read lazily).
Nothing here ever holds a whole dataset on an accelerator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

Preprocess = Callable[[Any], torch.Tensor]  # PIL image -> [3, H, W]


@dataclass(frozen=True)
class PixelTransform:
    """A preprocess split in two: `to_pixels` (PIL -> float [3, H, W] in k/255) on the host,
    `mean`/`std` normalisation on the device."""

    to_pixels: Preprocess
    mean: torch.Tensor  # [3]
    std: torch.Tensor  # [3]


def split_preprocess(preprocess: Preprocess) -> PixelTransform | None:
    """open_clip's eval transform is Compose([..., ToTensor, Normalize]); peel the Normalize
    off when the rest yields exact uint8 levels (k/255). None for anything else."""
    steps = getattr(preprocess, "transforms", None)
    if not steps or type(steps[-1]).__name__ != "Normalize":
        return None
    norm = steps[-1]
    head = type(preprocess)(list(steps[:-1]))
    probe = Image.effect_noise((37, 29), 64).convert("RGB")
    x = head(probe)
    if not (torch.is_tensor(x) and x.dtype == torch.float32 and x.ndim == 3):
        return None
    if not torch.equal(to_uint8(x).float().div(255), x):
        return None
    mean = torch.as_tensor(norm.mean, dtype=torch.float32)
    std = torch.as_tensor(norm.std, dtype=torch.float32)
    return PixelTransform(head, mean, std)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float pixels in [0, 1] (multiples of 1/255) -> uint8 levels."""
    return x.mul(255).round_().clamp_(0, 255).to(torch.uint8)


class HostImages:
    """`[N, 3, H, W]` images on the host: uint8 pixels + (mean, std), or float preprocessed."""

    def __init__(self, data: torch.Tensor, mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None) -> None:
        if data.dtype == torch.uint8 and (mean is None or std is None):
            raise ValueError("uint8 images need the normalisation mean and std")
        self.data = data  # [N, 3, H, W] uint8 or float, on the CPU
        self.mean, self.std = mean, std
        self._pinned = False

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def pin(self) -> HostImages:
        """Page-lock the images once (fast, asynchronous host->GPU copies)."""
        if not self._pinned and torch.cuda.is_available():
            self.data = self.data.pin_memory()
            self._pinned = True
        return self

    def batch(self, index: torch.Tensor | slice, device: torch.device) -> torch.Tensor:
        """float32 `[b, 3, H, W]` on `device` for rows `index` (one host->device copy)."""
        rows = self.data[index] if isinstance(index, slice) else self.data.index_select(0, index)
        if device.type == "cuda" and not rows.is_pinned():
            rows = rows.pin_memory()
        x = rows.to(device, non_blocking=True)
        if x.dtype != torch.uint8:
            return x.float()
        assert self.mean is not None and self.std is not None
        mean = self.mean.to(device)[:, None, None]  # [3, 1, 1]
        std = self.std.to(device)[:, None, None]
        return x.float().div_(255).sub_(mean).div_(std)  # ToTensor, then Normalize

    def batches(self, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
        """The whole set, in order, `batch_size` rows at a time, on `device`."""
        for i in range(0, len(self), batch_size):
            yield self.batch(slice(i, i + batch_size), device)

    def subset(self, index: torch.Tensor) -> HostImages:
        """A copy of some rows (still on the host)."""
        return HostImages(self.data.index_select(0, index), self.mean, self.std)

    def materialize(self) -> torch.Tensor:
        """float32 `[N, 3, H, W]` on the CPU — for tests and small sets only."""
        return self.batch(slice(None), torch.device("cpu"))
