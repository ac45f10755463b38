"""Batched forward passes of the image tower with swapped-in tensors (torch.func).

`params` maps full state-dict names ('visual.…') to tensors: the merged float parameters and,
where the tower has them, float buffers (BatchNorm running statistics). Anything not given comes
from the module itself.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch.func import functional_call

from calm.heads import logits as head_logits
from calm.images import HostImages

Params = dict[str, torch.Tensor]
PREFIX = "visual."


def autocast(device: torch.device, bf16: bool) -> AbstractContextManager[object]:
    """bf16 autocast for the forward pass (accelerators only; the CPU stays fp32)."""
    if bf16 and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def visual_features(
    visual: torch.nn.Module, params: Params, images: torch.Tensor, bf16: bool = False
) -> torch.Tensor:
    """images [B,3,H,W] -> image features [B,D] of `visual` run with `params` ('visual.*').
    Towers built with `output_tokens` return (pooled, tokens): the pooled output is used."""
    local = {k[len(PREFIX):]: v for k, v in params.items()}
    with autocast(images.device, bf16):
        out = functional_call(visual, local, (images,), strict=False)
    if isinstance(out, tuple | list):
        out = out[0]  # [B, D] pooled
    return out.float()


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
    images: HostImages,
    head: torch.Tensor,
    batch_size: int = 256,
    bf16: bool = False,
    index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits [N, C] (on head's device) over host images (all, or rows `index`), streamed to
    the device one batch at a time."""
    device = head.device
    if index is None:
        batches = images.batches(batch_size, device)
    else:
        batches = (images.batch(index[i : i + batch_size], device)
                   for i in range(0, len(index), batch_size))
    out = [visual_logits(visual, params, x, head, bf16) for x in batches]
    return torch.cat(out).float() if out else head.new_zeros((0, head.shape[0]))


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1).cpu() == labels.cpu()).float().mean())
