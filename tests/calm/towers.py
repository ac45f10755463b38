"""Tiny open_clip towers beyond the plain ViT: a ModifiedResNet (BatchNorm) and a ViT built
with `output_tokens`, plus checkpoints whose BatchNorm statistics differ per task."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from calm.models import build_model, register_arch

TEXT = {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}
RESNET = {"embed_dim": 16, "text_cfg": TEXT,
          "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16}}
TOKENS = {"embed_dim": 16, "text_cfg": TEXT,
          "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "head_width": 8,
                         "patch_size": 4, "output_tokens": True}}


def register(name: str, config: dict[str, Any]) -> str:
    register_arch(name, copy.deepcopy(config))
    return name


def write_checkpoints(arch: str, root: Path, n_tasks: int, scale: float = 0.03,
                      seed: int = 0) -> tuple[Path, list[Path], dict[str, torch.Tensor]]:
    """base.safetensors + task{i}.safetensors: parameters and float buffers (BatchNorm
    running statistics) of the image tower perturbed per task, like a fine-tune in BN train mode."""
    torch.manual_seed(seed)
    model, _ = build_model(arch)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    root.mkdir(parents=True, exist_ok=True)
    save_file(base, str(root / "base.safetensors"))
    gen = torch.Generator().manual_seed(seed + 1)
    paths = []
    for i in range(n_tasks):
        state = {}
        for k, v in base.items():
            noise = torch.randn(v.shape, generator=gen) if v.is_floating_point() else None
            if noise is None or not k.startswith("visual."):
                state[k] = v.clone()
            elif k.endswith("running_var"):
                state[k] = v * (1 + 0.5 * noise.abs())
            else:
                state[k] = v + scale * noise
        paths.append(root / f"task{i}.safetensors")
        save_file(state, str(paths[-1]))
    return root / "base.safetensors", paths, base
