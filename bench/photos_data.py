"""Photos of the photos suite: scikit-image's bundled real photographs, split by source photo,
and seeded 32x32 patches cut from them.

The photos are read as files from the installed `skimage/data/` folder (PNG/JPEG, nothing is
downloaded and nothing is unpickled). Splits are *by photo*: the test photos are never seen by
pretraining, fine-tuning or the unlabeled data of any task, and each task's fine-tune and
unlabeled photos are disjoint.
"""

from __future__ import annotations

import functools
import importlib.util
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from bench.photos_tasks import TaskDef

SIDE = 32  # patch side = the tower's image_size
# Real photographs (and one scanned page) in scikit-image's wheel; synthetic images (color,
# logo, phantom, chessboard, horse), the motion-blurred clock and the mostly flat cell/
# microaneurysm crops are left out.
PHOTOS: tuple[str, ...] = (
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png",
    "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png",
    "motorcycle_left.png", "page.png", "retina.jpg", "rocket.jpg", "text.png",
)
# Held out from every training step of every task: a colour scene, a grey scene, a texture and a
# microscopy slide, so the test covers the kinds of photo the training photos have.
TEST_PHOTOS: tuple[str, ...] = ("camera.png", "coffee.png", "gravel.png", "ihc.png")
SPLITS = ("finetune", "unlabeled", "test")
_MIN_STD = 10.0  # grey-level std below which a patch is flat and carries no label signal


def skimage_data_dir() -> Path:
    """The installed scikit-image's data folder (no import of skimage itself)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the photos suite needs scikit-image: pip install 'calm-merge[dev]'")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@functools.cache
def load_photo(index: int) -> Image.Image:
    """PHOTOS[index] as an RGB image."""
    with Image.open(skimage_data_dir() / PHOTOS[index]) as im:
        return im.convert("RGB")


def photo_splits(seed: int) -> dict[str, np.ndarray]:
    """Photo indices: 'test' (never trained on) and 'train' (pretraining + every task's pool)."""
    test = np.array([PHOTOS.index(n) for n in TEST_PHOTOS], dtype=np.int64)
    train = np.array([i for i in range(len(PHOTOS)) if i not in test], dtype=np.int64)
    return {"test": np.sort(test), "train": np.random.default_rng(seed).permutation(train)}


def task_photo_splits(
    train: np.ndarray, test: np.ndarray, task: TaskDef, n_unlabeled_photos: int, seed: int
) -> dict[str, np.ndarray]:
    """A task's own seeded split of the training photos into 'finetune' / 'unlabeled'."""
    perm = np.random.default_rng([seed, zlib.crc32(task.name.encode())]).permutation(train)
    return {
        "finetune": np.sort(perm[n_unlabeled_photos:]),
        "unlabeled": np.sort(perm[:n_unlabeled_photos]),
        "test": np.sort(test),
    }


def sample_patches(photos: np.ndarray, n: int, rng: np.random.Generator) -> list[Image.Image]:
    """n textured SIDE x SIDE RGB patches: a random square crop (48-128 px) of a random photo of
    `photos`, area-downsampled; flat crops are drawn again."""
    out: list[Image.Image] = []
    while len(out) < n:
        photo = load_photo(int(rng.choice(photos)))
        side = min(int(rng.integers(48, 129)), *photo.size)
        x = int(rng.integers(0, photo.width - side + 1))
        y = int(rng.integers(0, photo.height - side + 1))
        patch = photo.crop((x, y, x + side, y + side)).resize((SIDE, SIDE), Image.Resampling.BOX)
        if np.asarray(patch.convert("L"), dtype=np.float64).std() >= _MIN_STD:
            out.append(patch)
    return out


def balanced_labels(n: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    """[n] int64 class indices, each class n/classes times (+-1), shuffled."""
    return rng.permutation(np.arange(n) % classes).astype(np.int64)


def render_task_split(
    task: TaskDef, photos: np.ndarray, n: int, split: str, seed: int
) -> tuple[list[Image.Image], np.ndarray]:
    """n images of `task` from `photos` (its domain, balanced classes) and their labels [n]."""
    rng = np.random.default_rng([seed, zlib.crc32(task.name.encode()), SPLITS.index(split)])
    patches = sample_patches(photos, n, rng)
    labels = balanced_labels(n, len(task.attr.classnames), rng)
    return [task.render(p, int(k), rng) for p, k in zip(patches, labels, strict=True)], labels
