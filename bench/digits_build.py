"""Build the digits suite's files: pretrain, fine-tune every task, write tensors + suite.json."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import open_clip
import torch
from safetensors.torch import save_file

from bench.digits_data import digits_of, global_splits, load_digits, render_split, task_splits
from bench.digits_data import to_tensor as _to_tensor
from bench.digits_tasks import ATTRIBUTES, TaskDef
from bench.digits_train import accuracy, caption_table, finetune, pretrain
from calm.heads import zero_shot_head

if TYPE_CHECKING:
    from bench.digits_suite import SuiteConfig


def _save_model(model: torch.nn.Module, path: Path) -> None:
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))


class _Log:
    def __init__(self, size: str, verbose: bool) -> None:
        self.size, self.verbose, self.start = size, verbose, time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.verbose:
            print(f"[digits:{self.size} {time.perf_counter() - self.start:6.1f}s] {msg}", flush=True)


def build_files(config: SuiteConfig, out: Path, verbose: bool = True) -> None:
    """Write every file of the suite into `out` (a fresh directory)."""
    log = _Log(config.size, verbose)
    out.mkdir(parents=True)
    timings: dict[str, Any] = {}
    t0 = time.perf_counter()
    n_total = len(load_digits()[1])
    splits = global_splits(n_total, config.n_pretrain, config.n_test, config.seed)
    torch.manual_seed(config.seed)
    model, _, preprocess = open_clip.create_model_and_transforms(config.arch)
    model.eval()

    tokenizer = open_clip.get_tokenizer(config.arch)
    tokens, match = caption_table(tokenizer, [ATTRIBUTES[a] for a in config.attributes])
    pre_images = _to_tensor(render_split(None, splits["pretrain"]), preprocess)  # untransformed
    pre_digits = torch.from_numpy(digits_of(splits["pretrain"]))
    log(f"pretraining on {len(pre_images)} images x {len(tokens)} captions")
    t = time.perf_counter()
    losses = pretrain(
        model, pre_images, pre_digits, tokens, match, config.pretrain_steps,
        config.pretrain_batch, config.pretrain_lr, config.seed,
    )
    timings["pretrain_s"] = round(time.perf_counter() - t, 2)
    log(f"pretrained: loss {losses[0]:.3f} -> {sum(losses[-20:]) / 20:.3f}")
    _save_model(model, out / "base.safetensors")

    tasks_meta = []
    timings["finetune_s"] = {}
    for i, task in enumerate(config.tasks):
        t = time.perf_counter()
        meta = _build_task(config, task, i, model, preprocess, splits, out)
        timings["finetune_s"][task.name] = round(time.perf_counter() - t, 2)
        acc = meta["accuracy"]
        log(f"{task.name}: zero-shot {acc['zero_shot']:.3f} -> individual "
            f"{acc['individual']:.3f} ({timings['finetune_s'][task.name]:.1f}s)")
        tasks_meta.append(meta)
    timings["total_s"] = round(time.perf_counter() - t0, 2)
    _write_meta(config, out, splits, tasks_meta, timings, model)


def _build_task(
    config: SuiteConfig,
    task: TaskDef,
    index: int,
    base: open_clip.CLIP,
    preprocess: Any,
    splits: dict[str, Any],
    out: Path,
) -> dict[str, Any]:
    """Fine-tune one task from `base`; write its checkpoint and split tensors."""
    own = task_splits(splits["pool"], splits["test"], task, config.n_unlabeled, config.seed)
    tensors = {k: _to_tensor(render_split(task, v), preprocess) for k, v in own.items()}
    labels = {k: torch.from_numpy(task.labels(digits_of(v))) for k, v in own.items()}
    attr = task.attr
    head = zero_shot_head(base, config.arch, list(attr.classnames), list(attr.templates))
    zero_shot = accuracy(base, head, tensors["test"], labels["test"])

    model = copy.deepcopy(base)
    finetune(
        model, head, tensors["finetune"], labels["finetune"], config.finetune_epochs,
        config.finetune_batch, config.finetune_lr, config.seed + 1 + index,
    )
    individual = accuracy(model, head, tensors["test"], labels["test"])
    _save_model(model, out / f"{task.name}.safetensors")
    save_file({"images": tensors["unlabeled"]}, str(out / f"{task.name}_unlabeled.safetensors"))
    save_file(
        {"images": tensors["test"], "labels": labels["test"]},
        str(out / f"{task.name}_test.safetensors"),
    )
    return {
        "name": task.name,
        "attribute": task.attribute,
        "domain": task.domain,
        "classnames": list(attr.classnames),
        "templates": list(attr.templates),
        "num_classes": len(attr.classnames),
        "sizes": {k: len(v) for k, v in own.items()},
        "splits": {k: [int(i) for i in v] for k, v in own.items()},
        "accuracy": {
            "zero_shot": round(zero_shot, 4),
            "individual": round(individual, 4),
            "finetune_train": round(
                accuracy(model, head, tensors["finetune"], labels["finetune"]), 4
            ),
        },
    }


def _write_meta(
    config: SuiteConfig,
    out: Path,
    splits: dict[str, Any],
    tasks_meta: list[dict[str, Any]],
    timings: dict[str, Any],
    model: open_clip.CLIP,
) -> None:
    files = ["base.safetensors"]
    for t in tasks_meta:
        files += [f"{t['name']}{s}.safetensors" for s in ("", "_unlabeled", "_test")]
    info = {
        "size": config.size,
        "key": config.key(),
        "arch": config.arch,
        "model_config": config.model_config,
        "params": {
            "image_tower": sum(p.numel() for p in model.visual.parameters()),
            "total": sum(p.numel() for p in model.parameters()),
        },
        "pretrain_split": [int(i) for i in splits["pretrain"]],
        "config": {k: v for k, v in config.__dict__.items() if k not in ("tasks", "model_config")},
        "tasks": tasks_meta,
        "files": files,
        "timings": timings,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
    }
    (out / "suite.json").write_text(json.dumps(info, indent=1))
