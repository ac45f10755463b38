"""Batched forward passes of the image tower with swapped-in parameters (torch.func)."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.func import functional_call

from calm.heads import logits as head_logits

Params = dict[str, torch.Tensor]
PREFIX = "visual."


def visual_features(
    visual: torch.nn.Module, params: Params, images: torch.Tensor, bf16: bool = False
) -> torch.Tensor:
    """images [B,3,H,W] -> image features [B,D] of `visual` run with `params` ('visual.*')."""
    local = {k[len(PREFIX):]: v for k, v in params.items()}
    ctx = (
        torch.autocast(device_type=images.device.type, dtype=torch.bfloat16)
        if bf16 and images.device.type == "cuda"
        else nullcontext()
    )
    with ctx:
        return functional_call(visual, local, (images,), strict=False).float()


def visual_logits(
    visual: torch.nn.Module, params: Params, images: torch.Tensor, head: torch.Tensor,
    bf16: bool = False,
) -> torch.Tensor:
    """images [B,3,H,W] -> logits [B,C]."""
    return head_logits(visual_features(visual, params, images, bf16), head)


@torch.no_grad()
def predict_logits(
    visual: torch.nn.Module,
    params: Params,
    images: torch.Tensor,
    head: torch.Tensor,
    batch_size: int = 256,
    bf16: bool = False,
) -> torch.Tensor:
    """Logits [N, C] over a whole image tensor (kept on its device; batches moved as needed)."""
    device = head.device
    out = [
        visual_logits(visual, params, images[i : i + batch_size].to(device), head, bf16)
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).float()


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1).cpu() == labels.cpu()).float().mean())
