"""Digits data of the suite: deterministic splits, rendering through open_clip's eval transform,
and PNG archives of a split (so image-archive loaders can be checked against the tensor files).
"""

from __future__ import annotations

import functools
import io
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.digits_tasks import TaskDef, render_base

Preprocess = Callable[[Image.Image], torch.Tensor]  # PIL image -> [3, H, W]

SPLITS = ("finetune", "unlabeled", "test")


@functools.cache
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: images [1797, 8, 8] float (0..16), digits [1797] int64."""
    from sklearn.datasets import load_digits as _load

    data = _load()
    return data.images.astype(np.float64), data.target.astype(np.int64)


def global_splits(n_total: int, n_pretrain: int, n_test: int, seed: int) -> dict[str, np.ndarray]:
    """Disjoint image indices: 'pretrain' (identity domain, captions), 'test' (held out from every
    training step of every task) and 'pool' (per-task fine-tune / unlabeled)."""
    perm = np.random.default_rng(seed).permutation(n_total)
    if n_pretrain + n_test >= n_total:
        raise ValueError("pretrain + test splits leave no images for fine-tuning")
    return {
        "pretrain": np.sort(perm[:n_pretrain]),
        "test": np.sort(perm[n_pretrain : n_pretrain + n_test]),
        "pool": perm[n_pretrain + n_test :],
    }


def task_splits(
    pool: np.ndarray, test: np.ndarray, task: TaskDef, n_unlabeled: int, seed: int
) -> dict[str, np.ndarray]:
    """A task's own seeded split of the pool into 'finetune' / 'unlabeled'; 'test' is shared."""
    rng = np.random.default_rng([seed, zlib.crc32(task.name.encode())])
    perm = rng.permutation(pool)
    return {
        "finetune": np.sort(perm[n_unlabeled:]),
        "unlabeled": np.sort(perm[:n_unlabeled]),
        "test": test,
    }


def render_split(task: TaskDef | None, indices: np.ndarray) -> list[Image.Image]:
    """The 16x16 'L' images of `indices` in the task's domain (None: untransformed)."""
    images, _ = load_digits()
    if task is None:
        return [render_base(images[i]) for i in indices]
    return [task.render(images[i]) for i in indices]


def to_tensor(images: list[Image.Image], preprocess: Preprocess) -> torch.Tensor:
    """PIL images -> [N, 3, H, W] float32, exactly as open_clip's eval transform makes them from
    a PNG of the image (it converts to RGB itself)."""
    return torch.stack([preprocess(im) for im in images]).float().contiguous()


def digits_of(indices: np.ndarray) -> np.ndarray:
    """Digit identity [N] of image indices [N]."""
    return load_digits()[1][indices]


def write_png_zip(
    images: list[Image.Image], path: Path, labels: np.ndarray | None = None
) -> Path:
    """A reproducible .zip of PNGs: '00000.png', ... in split order, or '<label>/00000.png'
    (one sub-folder per class index) when labels are given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i, im in enumerate(images):
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            name = f"{i:05d}.png" if labels is None else f"{int(labels[i])}/{i:05d}.png"
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())
    return path
