"""Frozen classification heads: CLIP zero-shot heads from class names, or a supplied tensor."""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from calm.errors import DataError


@torch.no_grad()
def zero_shot_head(
    model: torch.nn.Module, arch: str, classnames: list[str], templates: list[str]
) -> torch.Tensor:
    """[C, D] head: per class, encode every template, L2-normalise, average, renormalise;
    scaled by exp(logit_scale). Logits = head @ normalise(image_features)."""
    tokenizer = open_clip.get_tokenizer(arch)
    device = next(model.parameters()).device
    rows = []
    for name in classnames:
        tokens = tokenizer([t.format(name) for t in templates]).to(device)  # [T, L]
        emb = F.normalize(model.encode_text(tokens).float(), dim=-1)  # [T, D]
        rows.append(F.normalize(emb.mean(dim=0), dim=-1))  # [D]
    head = torch.stack(rows)  # [C, D]
    return head * model.logit_scale.exp().float()


def load_head(path: Path, embed_dim: int) -> torch.Tensor:
    """A user-supplied head: .safetensors with 'weight' [C, D] (already scaled)."""
    try:
        weight = load_file(str(path))["weight"]
    except KeyError as e:
        raise DataError(f"head file {path.name}: no tensor named 'weight' [C, D]") from e
    except Exception as e:  # safetensors raises its own error types on bad headers
        raise DataError(f"head file {path.name}: not a readable safetensors file ({e})") from e
    if weight.ndim != 2 or weight.shape[1] != embed_dim or weight.shape[0] < 2:
        raise DataError(
            f"head file {path.name}: 'weight' must be [C>=2, {embed_dim}], got {list(weight.shape)}"
        )
    if not torch.isfinite(weight).all():
        raise DataError(f"head file {path.name}: 'weight' has NaN or Inf values")
    return weight.float()


def logits(features: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """features [N, D] (unnormalised image features) -> logits [N, C]."""
    return F.normalize(features.float(), dim=-1) @ head.t()
