"""Synthetic ViT-B/32-sized merge inputs for bench.merge_speed, cached under bench/cache.

A random-init open_clip ViT-B-32 (at 224 px the built-in config; at other sizes the same config
with `vision_cfg.image_size` changed, registered under its own name), task checkpoints
θ_t = θ0 + N(0, 1e-3) on the image tower, and per task safetensors files of random
preprocessed images `[N, 3, S, S]`: a small set (`unlabeled`) for every task and a large one
(`large`) for the first two (jobs with many images per epoch).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLASSES = [f"class {i}" for i in range(10)]


@dataclass(frozen=True)
class Fixture:
    root: Path
    arch: str
    custom_config: dict[str, Any] | None
    image_size: int
    tasks: int
    unlabeled: int
    large: int
    visual_params: int


def _arch(image_size: int) -> tuple[str, dict[str, Any] | None]:
    import open_clip

    if image_size == 224:
        return "ViT-B-32", None
    config = copy.deepcopy(open_clip.get_model_config("ViT-B-32"))
    config["vision_cfg"]["image_size"] = image_size
    return f"calm-speed-ViT-B-32-{image_size}px", config


def make_fixture(root: Path, image_size: int, tasks: int, unlabeled: int,
                 large: int = 0) -> Fixture:
    """Build (or reuse) the checkpoints and images under `root`."""
    arch, config = _arch(image_size)
    meta_path = root / "fixture.json"
    want = {"arch": arch, "image_size": image_size, "tasks": tasks, "unlabeled": unlabeled,
            "large": large, "version": 1}
    if meta_path.is_file() and {k: v for k, v in json.loads(meta_path.read_text()).items()
                                if k in want} == want:
        meta = json.loads(meta_path.read_text())
    else:
        meta = {**want, "visual_params": _build(root, arch, config, image_size, tasks, unlabeled,
                                                large)}
        meta_path.write_text(json.dumps(meta))
    return Fixture(root, arch, config, image_size, tasks, unlabeled, large, meta["visual_params"])


def _build(root: Path, arch: str, config: dict[str, Any] | None, image_size: int, tasks: int,
           unlabeled: int, large: int) -> int:
    import torch
    from safetensors.torch import save_file

    from calm.models import build_model, register_arch

    root.mkdir(parents=True, exist_ok=True)
    register_arch(arch, config)
    torch.manual_seed(0)
    model, _ = build_model(arch)
    base = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(base, str(root / "base.safetensors"))
    gen = torch.Generator().manual_seed(1)
    for i in range(tasks):
        state = {k: (v + 1e-3 * torch.randn(v.shape, generator=gen)
                     if k.startswith("visual.") and v.is_floating_point() else v)
                 for k, v in base.items()}
        save_file(state, str(root / f"task{i}.safetensors"))
        for name, n in (("unlabeled", unlabeled), ("large", large if i < 2 else 0)):
            if n:
                images = torch.randn(n, 3, image_size, image_size, generator=gen)
                save_file({"images": images}, str(root / f"task{i}_{name}.safetensors"))
        print(f"  fixture: task {i + 1}/{tasks} written", flush=True)
    return sum(v.numel() for k, v in model.named_parameters() if k.startswith("visual."))


def job_spec(fx: Fixture, tasks: int, options: dict[str, Any], device: str = "cpu",
             precision: str = "auto", data: str = "unlabeled",
             micro_batch_size: int | str = "auto") -> dict[str, Any]:
    """A MergeRequest dict (spec + run options): CALM over the first `tasks` tasks, no eval data."""
    return {
        "model": {"arch": fx.arch, "custom_config": fx.custom_config,
                  "checkpoint": str(fx.root / "base.safetensors")},
        "tasks": [{"name": f"task{i}", "checkpoint": str(fx.root / f"task{i}.safetensors"),
                   "unlabeled": str(fx.root / f"task{i}_{data}.safetensors"),
                   "classnames": CLASSES, "templates": ["a photo of a {}."]}
                  for i in range(tasks)],
        "method": "calm", "options": options,
        "run": {"device": device, "precision": precision, "micro_batch_size": micro_batch_size},
    }
