"""Build the photos suite's files: pretrain, fine-tune every task (BatchNorm in train mode),
write tensors + suite.json. Accuracies are measured with each model's own BatchNorm buffers."""

from __future__ import annotations

import copy
import json
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import open_clip
import torch
from safetensors.torch import save_file

from bench.digits_data import to_tensor
from bench.digits_train import accuracy, finetune, pretrain
from bench.photos_data import (
    PHOTOS,
    photo_splits,
    render_task_split,
    sample_patches,
    task_photo_splits,
)
from bench.photos_tasks import ATTRIBUTES, TaskDef
from calm.heads import zero_shot_head

if TYPE_CHECKING:
    from bench.photos_suite import PhotosConfig


def caption_table(
    tokenizer: Any, attributes: list[str]
) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """Pretraining captions of `attributes`. A *sample type* is (attribute a, class c): a patch
    with a's class-c operation and every other attribute untouched. -> tokens [S, L],
    match [T, S] (type t fits caption s), offsets (type of (a, c) = offsets[a] + c)."""
    offsets, types = {}, []
    for name in attributes:
        offsets[name] = len(types)
        types += [(name, c) for c in range(len(ATTRIBUTES[name].classnames))]
    texts, match = [], []
    for name in attributes:
        attr = ATTRIBUTES[name]
        for caption, k in attr.captions():
            texts.append(caption)
            match.append([k == (c if a == name else attr.neutral) for a, c in types])
    return tokenizer(texts), torch.tensor(match, dtype=torch.float32).t(), offsets


def pretrain_set(
    config: PhotosConfig, photos: np.ndarray, offsets: dict[str, int], preprocess: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """images [N, 3, S, S] (one random attribute's random class each, no domain), types [N]."""
    rng = np.random.default_rng([config.seed, zlib.crc32(b"pretrain")])
    patches = sample_patches(photos, config.n_pretrain, rng)
    names = config.attributes
    attrs = rng.integers(0, len(names), config.n_pretrain)
    images, types = [], []
    for patch, a in zip(patches, attrs, strict=True):
        attr = ATTRIBUTES[names[a]]
        c = int(rng.integers(0, len(attr.classnames)))
        images.append(attr.ops[c](patch, rng))
        types.append(offsets[names[a]] + c)
    return to_tensor(images, preprocess), torch.tensor(types)


def _save_model(model: torch.nn.Module, path: Path) -> None:
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))


def _log(size: str, verbose: bool, start: float, msg: str) -> None:
    if verbose:
        print(f"[photos:{size} {time.perf_counter() - start:6.1f}s] {msg}", flush=True)


def build_files(config: PhotosConfig, out: Path, verbose: bool = True) -> None:
    """Write every file of the suite into `out` (a fresh directory)."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    out.mkdir(parents=True)
    splits = photo_splits(config.seed)
    torch.manual_seed(config.seed)
    model, _, preprocess = open_clip.create_model_and_transforms(config.arch)
    tokens, match, offsets = caption_table(open_clip.get_tokenizer(config.arch), config.attributes)
    images, types = pretrain_set(config, splits["train"], offsets, preprocess)
    _log(config.size, verbose, t0, f"pretraining on {len(images)} patches x {len(tokens)} captions")
    t = time.perf_counter()
    losses = pretrain(model, images, types, tokens, match, config.pretrain_steps,
                      config.pretrain_batch, config.pretrain_lr, config.seed)
    timings: dict[str, Any] = {"pretrain_s": round(time.perf_counter() - t, 2), "finetune_s": {}}
    _log(config.size, verbose, t0, f"pretrained: loss {losses[0]:.3f} -> {np.mean(losses[-20:]):.3f}")
    _save_model(model, out / "base.safetensors")
    tasks_meta = []
    for i, task in enumerate(config.tasks):
        t = time.perf_counter()
        meta = _build_task(config, task, i, model, preprocess, splits, out)
        timings["finetune_s"][task.name] = round(time.perf_counter() - t, 2)
        acc = meta["accuracy"]
        _log(config.size, verbose, t0, f"{task.name}: zero-shot {acc['zero_shot']:.3f} -> individual "
             f"{acc['individual']:.3f} ({timings['finetune_s'][task.name]:.1f}s)")
        tasks_meta.append(meta)
    timings["total_s"] = round(time.perf_counter() - t0, 2)
    timings["cpu_s"] = round(time.process_time() - cpu0, 2)  # all threads: wall time on a quiet box
    _write_meta(config, out, splits, tasks_meta, timings, model)


def _build_task(
    config: PhotosConfig, task: TaskDef, index: int, base: open_clip.CLIP, preprocess: Any,
    splits: dict[str, np.ndarray], out: Path,
) -> dict[str, Any]:
    """Fine-tune one task from `base` (BatchNorm in train mode); write its checkpoint and splits."""
    own = task_photo_splits(splits["train"], splits["test"], task, config.n_unlabeled_photos,
                            config.seed)
    sizes = {"finetune": config.n_finetune, "unlabeled": config.n_unlabeled, "test": config.n_test}
    tensors, labels = {}, {}
    for split, photos in own.items():
        images, y = render_task_split(task, photos, sizes[split], split, config.seed)
        tensors[split], labels[split] = to_tensor(images, preprocess), torch.from_numpy(y)
    attr = task.attr
    head = zero_shot_head(base.eval(), config.arch, list(attr.classnames), list(attr.templates))
    zero_shot = accuracy(base, head, tensors["test"], labels["test"])
    model = copy.deepcopy(base)
    finetune(model, head, tensors["finetune"], labels["finetune"], config.finetune_epochs,
             config.finetune_batch, config.finetune_lr, config.seed + 1 + index)
    individual = accuracy(model, head, tensors["test"], labels["test"])  # its own BN buffers
    _save_model(model, out / f"{task.name}.safetensors")
    save_file({"images": tensors["unlabeled"]}, str(out / f"{task.name}_unlabeled.safetensors"))
    save_file({"images": tensors["test"], "labels": labels["test"]},
              str(out / f"{task.name}_test.safetensors"))
    return {
        "name": task.name, "attribute": task.attribute, "domain": task.domain,
        "classnames": list(attr.classnames), "templates": list(attr.templates),
        "num_classes": len(attr.classnames),
        "sizes": {k: len(v) for k, v in labels.items()},
        "splits": {k: [int(i) for i in v] for k, v in own.items()},
        "split_photos": {k: [PHOTOS[i] for i in v] for k, v in own.items()},
        "accuracy": {
            "zero_shot": round(zero_shot, 4), "individual": round(individual, 4),
            "finetune_train": round(
                accuracy(model, head, tensors["finetune"], labels["finetune"]), 4),
        },
    }


def _write_meta(
    config: PhotosConfig, out: Path, splits: dict[str, np.ndarray],
    tasks_meta: list[dict[str, Any]], timings: dict[str, Any], model: open_clip.CLIP,
) -> None:
    files = ["base.safetensors"]
    for t in tasks_meta:
        files += [f"{t['name']}{s}.safetensors" for s in ("", "_unlabeled", "_test")]
    info = {
        "suite": "photos", "size": config.size, "key": config.key(), "arch": config.arch,
        "model_config": config.model_config,
        "params": {"image_tower": sum(p.numel() for p in model.visual.parameters()),
                   "total": sum(p.numel() for p in model.parameters())},
        "source": "scikit-image " + _skimage_version() + ": skimage/data/*",
        "photos": list(PHOTOS),
        "pretrain_split": [int(i) for i in splits["train"]],
        "test_photos": [int(i) for i in splits["test"]],
        "config": {k: v for k, v in config.__dict__.items() if k not in ("tasks", "model_config")},
        "tasks": tasks_meta, "files": files, "timings": timings,
        "torch": torch.__version__, "open_clip": open_clip.__version__,
    }
    (out / "suite.json").write_text(json.dumps(info, indent=1))


def _skimage_version() -> str:
    from importlib.metadata import version

    return version("scikit-image")


__all__ = ["build_files", "caption_table", "pretrain_set"]
