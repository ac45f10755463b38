"""Mask density, the one definition: the share of a mask's entries that are set (taken from the
sequential task's vector), over one tensor or over all tensors of a mask together."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch


def mask_density(masks: Iterable[torch.Tensor]) -> float:
    """Set entries / all entries over the given tensors (bool or 0/1; any device, one sync);
    0.0 for no entries."""
    masks = list(masks)
    total = sum(m.numel() for m in masks)
    if total == 0:
        return 0.0
    on = torch.stack([torch.count_nonzero(m) for m in masks]).sum()
    return float(on) / total


def tensor_densities(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """tensor name -> its density."""
    return {name: mask_density([m]) for name, m in masks.items()}
