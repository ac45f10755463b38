"""A second benchmark suite: real photographs and a BatchNorm ResNet image tower.

    suite = build_suite("bench")             # or "test": 3 tasks, tiny, seconds
    spec = MergeSpec.model_validate(suite.merge_spec("calm", baselines=["ties"]))

**Source.** The real photographs that ship inside scikit-image's wheel (`skimage/data/`:
astronaut, camera, coffee, chelsea, rocket, motorcycle, Hubble deep field, retina, IHC slide,
coins, moon, brick / grass / gravel textures, a scanned page, ...). They are the only real,
varied photographs found in a well-kept PyPI or Debian package that need no download and no
unpickling; labelled collections in packages were either pickles, digits again, or a few images
per class (Tux Paint stamps, Open Clip Art), too few for fine-tuned towers to beat zero-shot on
unseen images. The labels therefore describe what was done to a patch of a real photo (blur,
noise, tone count, pixel size, JPEG quality, mirror symmetry, tiling, contrast): every patch
carries them, they are learnable by a small tower, and the splits can be made *by photo*.

**Model.** A tiny open_clip CLIP with a ModifiedResNet image tower (BatchNorm; `layers` a list,
32 px inputs; registered with `open_clip.add_model_config`) is "pretrained" contrastively on
patches of the training photos with captions of every label attribute. Each task fine-tunes the
image tower on its own input domain (inversion, emboss, edge filter, ...) and label set with
BatchNorm in **train mode**, so every task checkpoint carries its own running statistics; zero-shot
and individual accuracies in suite.json are measured with each model's own buffers.

**Splits.** Four test photos are never seen by pretraining or any task; each task splits the
other twelve photos into fine-tune and unlabeled photos of its own. Files live under
`cache_dir/photos-<size>-<hash of the config>/` with the digits suite's layout (base.safetensors,
<task>.safetensors, <task>_unlabeled.safetensors 'images', <task>_test.safetensors 'images' +
'labels', suite.json), and `load_suite` / `Suite.merge_spec` are the digits suite's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from bench.digits_suite import Suite, load_suite, register_arch
from bench.photos_tasks import BENCH_TASKS, TEST_TASKS, TaskDef
from bench.suite_cache import cached_build

VERSION = 1  # bump when rendering or training code changes the files

Size = Literal["bench", "test"]


@dataclass(frozen=True)
class PhotosConfig:
    """Everything that determines the suite's files (its hash keys the cache)."""

    size: str
    arch: str
    model_config: dict[str, Any]
    tasks: tuple[TaskDef, ...]
    n_pretrain: int
    n_finetune: int
    n_unlabeled: int
    n_test: int
    n_unlabeled_photos: int
    pretrain_steps: int
    pretrain_batch: int
    pretrain_lr: float
    finetune_epochs: int
    finetune_batch: int
    finetune_lr: float
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({"version": VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def attributes(self) -> list[str]:
        """Attributes captioned in pretraining: those of the tasks, in order."""
        return list(dict.fromkeys(t.attribute for t in self.tasks))


def _clip_config(width: int, text_width: int, text_layers: int) -> dict[str, Any]:
    """A CLIP whose image tower is open_clip's ModifiedResNet ('layers' is a list)."""
    return {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": width, "head_width": 32},
        "text_cfg": {
            "context_length": 16, "vocab_size": 49408, "width": text_width, "heads": 4,
            "layers": text_layers,
        },
    }


CONFIGS: dict[str, PhotosConfig] = {
    "bench": PhotosConfig(
        size="bench", arch="calm-photos-rn", model_config=_clip_config(8, 64, 2),
        tasks=BENCH_TASKS, n_pretrain=4000, n_finetune=1200, n_unlabeled=300, n_test=600,
        n_unlabeled_photos=3, pretrain_steps=1200, pretrain_batch=128, pretrain_lr=2e-3,
        finetune_epochs=8, finetune_batch=64, finetune_lr=2e-3,
    ),
    "test": PhotosConfig(
        size="test", arch="calm-photos-rn-tiny", model_config=_clip_config(8, 32, 1),
        tasks=TEST_TASKS, n_pretrain=600, n_finetune=256, n_unlabeled=64, n_test=128,
        n_unlabeled_photos=3, pretrain_steps=120, pretrain_batch=64, pretrain_lr=3e-3,
        finetune_epochs=4, finetune_batch=32, finetune_lr=3e-3,
    ),
}


def build_suite(
    size: Size = "bench", cache_dir: Path = Path("bench/cache"), verbose: bool = True
) -> Suite:
    """Build (or load from cache) the suite of `size`; see the module docstring."""
    config = CONFIGS[size]
    cache_dir = Path(cache_dir)
    root = cache_dir / f"photos-{size}-{config.key()}"
    register_arch(config.arch, config.model_config, cache_dir / "open_clip_configs" / config.key())

    def build(tmp: Path) -> None:
        import torch

        from bench.photos_build import build_files

        # One thread: the same files on every machine (thread count changes float sums), and
        # no spin-waiting when the cores are shared. Restored afterwards.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            build_files(config, tmp, verbose=verbose)
        finally:
            torch.set_num_threads(threads)

    return load_suite(cached_build(root, build, f"photos:{size}", verbose))


__all__ = ["CONFIGS", "PhotosConfig", "Suite", "build_suite", "load_suite"]
