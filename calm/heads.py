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


def load_head(path: Path, embed_dim: int, default_scale: float,
              num_classes: int | None = None) -> torch.Tensor:
    """A user-supplied head: .safetensors with 'weight' [C, D] and optionally 'logit_scale'
    (a scalar, log-scale as in CLIP). Returns the [C, D] head applied to L2-normalised image
    features:

    - with 'logit_scale': rows L2-normalised, times exp(logit_scale);
    - without, rows of unit norm (a plain zero-shot classifier): times `default_scale` (the
      base model's exp(logit_scale)) — otherwise the softmax is near-uniform;
    - otherwise the rows are taken as already scaled.
    """
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types on bad headers
        raise DataError(f"head file {path.name}: not a readable safetensors file ({e})") from e
    if "weight" not in tensors:
        raise DataError(f"head file {path.name}: no tensor named 'weight' [C, D]")
    weight = tensors["weight"]
    if weight.ndim != 2 or weight.shape[1] != embed_dim or weight.shape[0] < 2:
        hint = " (it looks transposed: save weight.T)" if weight.ndim == 2 and \
            weight.shape[0] == embed_dim else ""
        raise DataError(f"head file {path.name}: 'weight' must be [C>=2, {embed_dim}], got "
                        f"{list(weight.shape)}{hint}")
    if num_classes is not None and weight.shape[0] != num_classes:
        raise DataError(f"head file {path.name}: 'weight' has {weight.shape[0]} rows but the task "
                        f"lists {num_classes} class names")
    if not torch.isfinite(weight).all():
        raise DataError(f"head file {path.name}: 'weight' has NaN or Inf values")
    weight = weight.float()
    if "logit_scale" in tensors:
        log_scale = tensors["logit_scale"].float()
        if log_scale.numel() != 1 or not torch.isfinite(log_scale).all():
            raise DataError(f"head file {path.name}: 'logit_scale' must be one finite number")
        return F.normalize(weight, dim=-1) * float(log_scale.exp())
    norms = weight.norm(dim=-1)  # [C]
    if bool(((norms - 1).abs() < 1e-3).all()):
        return weight * default_scale
    return weight


def logits(features: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """features [N, D] (unnormalised image features) -> logits [N, C]."""
    return F.normalize(features.float(), dim=-1) @ head.t()
