"""Shared fixtures: a TINY open_clip CLIP registered at runtime (no downloads), random base
and "fine-tuned" checkpoints, and preprocessed image tensor files.

Torch / open_clip are imported inside the fixtures, so API-only environments (no torch) can
still collect the suite.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

TINY_ARCH = "calm-test-tiny-vit"
# ~1.6M parameters (1.6M of them the text token embedding): builds in ~40 ms on CPU.
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 16, "layers": 2, "width": 32, "head_width": 16, "patch_size": 4},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@dataclass
class TinyCheckpoints:
    arch: str
    base: Path  # base.safetensors
    tasks: list[Path]  # task{i}.safetensors
    base_state: dict[str, Any]  # name -> tensor
    task_states: list[dict[str, Any]]


@pytest.fixture(scope="session")
def tiny_config() -> dict[str, Any]:
    return copy.deepcopy(TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_arch() -> str:
    """The tiny config, registered with open_clip under TINY_ARCH."""
    from calm.models import register_arch

    register_arch(TINY_ARCH, copy.deepcopy(TINY_CONFIG))
    return TINY_ARCH


@pytest.fixture(scope="session")
def tiny_base_state(tiny_arch: str) -> dict[str, Any]:
    """A deterministic random 'pretrained' state dict of the tiny arch (CPU, fp32)."""
    import torch

    from calm.models import build_model

    torch.manual_seed(1234)
    model, _ = build_model(tiny_arch)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def tiny_preprocess(tiny_arch: str) -> Callable[[Any], Any]:
    """The tiny arch's eval transform (PIL image -> [3, 16, 16])."""
    from calm.models import build_model

    return build_model(tiny_arch)[1]


@pytest.fixture
def make_checkpoints(
    tiny_arch: str, tiny_base_state: dict[str, Any], tmp_path: Path
) -> Callable[..., TinyCheckpoints]:
    """make(n_tasks=2, scale=0.02, seed=0, directory=None) -> TinyCheckpoints.
    Fine-tuned = base + scale·N(0, 1) on the image tower's float tensors (`visual.*`) only;
    everything else is copied. All written as safetensors."""
    import torch
    from safetensors.torch import save_file

    def make(n_tasks: int = 2, scale: float = 0.02, seed: int = 0,
             directory: Path | None = None) -> TinyCheckpoints:
        d = directory or tmp_path / "checkpoints"
        d.mkdir(parents=True, exist_ok=True)
        gen = torch.Generator().manual_seed(seed)
        base_path = d / "base.safetensors"
        save_file(tiny_base_state, str(base_path))
        paths, states = [], []
        for i in range(n_tasks):
            state = {
                k: v + scale * torch.randn(v.shape, generator=gen)
                if k.startswith("visual.") and v.is_floating_point() else v.clone()
                for k, v in tiny_base_state.items()
            }
            paths.append(d / f"task{i}.safetensors")
            save_file(state, str(paths[-1]))
            states.append(state)
        return TinyCheckpoints(tiny_arch, base_path, paths, tiny_base_state, states)

    return make


@pytest.fixture
def tiny_checkpoints(make_checkpoints: Callable[..., TinyCheckpoints]
                     ) -> tuple[dict[str, Any], dict[str, Path]]:
    """(base state dict, {"t0"|"t1"|"t2": fine-tuned .safetensors path}) for three tasks."""
    ck = make_checkpoints(n_tasks=3)
    return ck.base_state, {f"t{i}": p for i, p in enumerate(ck.tasks)}


@pytest.fixture
def make_image_tensors(tmp_path: Path) -> Callable[..., Path]:
    """make(name, n=8, num_classes=None, seed=0) -> path of a .safetensors with 'images'
    [n, 3, 16, 16] float32 (already 'preprocessed') and, with num_classes, 'labels' [n] int64."""
    import torch
    from safetensors.torch import save_file

    def make(name: str, n: int = 8, num_classes: int | None = None, seed: int = 0) -> Path:
        gen = torch.Generator().manual_seed(seed)
        tensors = {"images": torch.randn(n, 3, 16, 16, generator=gen)}
        if num_classes is not None:
            tensors["labels"] = torch.arange(n, dtype=torch.int64) % num_classes
        path = tmp_path / "data" / f"{name}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path))
        return path

    return make


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """moto's standalone S3 server on a free localhost port, for the whole session."""
    from s3_helpers import moto_server

    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
        yield endpoint
