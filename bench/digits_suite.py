"""A reproducible, cached task suite on scikit-learn's digits for merge-quality benchmarks.

    suite = build_suite("bench")             # or "test": 3 tasks, tiny, seconds
    spec = MergeSpec.model_validate(suite.merge_spec("calm", baselines=["ties"]))

A tiny open_clip CLIP (registered with `open_clip.add_model_config`) is "pretrained"
contrastively on untransformed digits with captions of every label attribute; each task then
fine-tunes the image tower on its own input domain (rotation, inversion, blur, ...) with its
zero-shot head frozen. Files live under `cache_dir/digits-<size>-<hash of the config>/`:
base.safetensors, <task>.safetensors, <task>_unlabeled.safetensors ('images'),
<task>_test.safetensors ('images', 'labels') and suite.json (config, splits, accuracies, timings).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench.digits_tasks import ATTRIBUTES, BENCH_TASKS, TEST_TASKS, TaskDef
from bench.suite_cache import cached_build

VERSION = 2  # bump when rendering or training code changes the files

Size = Literal["bench", "test"]


@dataclass(frozen=True)
class SuiteConfig:
    """Everything that determines the suite's files (its hash keys the cache)."""

    size: str
    arch: str
    model_config: dict[str, Any]
    tasks: tuple[TaskDef, ...]
    n_pretrain: int
    n_test: int
    n_unlabeled: int
    pretrain_steps: int
    pretrain_batch: int
    pretrain_lr: float
    finetune_epochs: int
    finetune_batch: int
    finetune_lr: float
    seed: int = 0

    def key(self) -> str:
        import hashlib

        blob = json.dumps({"version": VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def attributes(self) -> list[str]:
        """Attributes captioned in pretraining: 'digit' plus those of the tasks, in order."""
        names = ["digit", *(t.attribute for t in self.tasks)]
        return list(dict.fromkeys(names))


def _clip_config(width: int, layers: int, text_width: int, text_layers: int) -> dict[str, Any]:
    return {
        "embed_dim": 64,
        "vision_cfg": {
            "image_size": 16, "patch_size": 4, "layers": layers, "width": width,
            "head_width": width // 4,
        },
        "text_cfg": {
            "context_length": 16, "vocab_size": 49408, "width": text_width, "heads": 4,
            "layers": text_layers,
        },
    }


CONFIGS: dict[str, SuiteConfig] = {
    "bench": SuiteConfig(
        size="bench", arch="calm-digits-vit", model_config=_clip_config(64, 3, 64, 2),
        tasks=BENCH_TASKS, n_pretrain=600, n_test=300, n_unlabeled=350,
        pretrain_steps=400, pretrain_batch=128, pretrain_lr=2e-3,
        finetune_epochs=16, finetune_batch=32, finetune_lr=2e-3,
    ),
    "test": SuiteConfig(
        size="test", arch="calm-digits-vit-tiny", model_config=_clip_config(32, 2, 32, 1),
        tasks=TEST_TASKS, n_pretrain=500, n_test=200, n_unlabeled=100,
        pretrain_steps=150, pretrain_batch=128, pretrain_lr=3e-3,
        finetune_epochs=5, finetune_batch=32, finetune_lr=3e-3,
    ),
}


@dataclass(frozen=True)
class SuiteTask:
    """One task's files and metadata."""

    name: str
    attribute: str
    domain: str
    classnames: list[str]
    templates: list[str]
    checkpoint: Path
    unlabeled: Path
    test: Path
    splits: dict[str, list[int]]  # 'finetune' / 'unlabeled' / 'test' -> digit image indices
    zero_shot_acc: float
    individual_acc: float

    @property
    def definition(self) -> TaskDef:
        return TaskDef(self.name, self.attribute, self.domain)


@dataclass(frozen=True)
class Suite:
    """A built suite: paths + metadata. `merge_spec` makes a dict for calm.spec.MergeSpec."""

    root: Path
    size: str
    arch: str
    model_config: dict[str, Any]
    base: Path
    tasks: list[SuiteTask]
    info: dict[str, Any] = field(repr=False)  # suite.json as loaded

    def task(self, name: str) -> SuiteTask:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"no task {name!r} in suite; have {[t.name for t in self.tasks]}")

    def merge_spec(
        self, method: str = "calm", options: dict[str, Any] | None = None, **kw: Any
    ) -> dict[str, Any]:
        """A MergeSpec-shaped dict over all tasks (eval = each task's labelled test split).
        Extra keyword arguments (seed, baselines, evaluate, ...) go to the top level."""
        return {
            "model": {
                "arch": self.arch,
                "custom_config": self.model_config,
                "checkpoint": str(self.base),
            },
            "tasks": [
                {
                    "name": t.name,
                    "checkpoint": str(t.checkpoint),
                    "unlabeled": str(t.unlabeled),
                    "classnames": list(t.classnames),
                    "templates": list(t.templates),
                    "eval": str(t.test),
                }
                for t in self.tasks
            ],
            "method": method,
            "options": dict(options or {}),
            **kw,
        }


def register_arch(arch: str, model_config: dict[str, Any], config_dir: Path) -> None:
    """Make `arch` an open_clip architecture (writes `<config_dir>/<arch>.json`)."""
    import open_clip

    if open_clip.get_model_config(arch) == model_config:
        return
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / f"{arch}.json"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(model_config, indent=2))
    os.replace(tmp, path)
    open_clip.add_model_config(path)


def build_suite(
    size: Size = "bench", cache_dir: Path = Path("bench/cache"), verbose: bool = True
) -> Suite:
    """Build (or load from cache) the suite of `size`; see the module docstring."""
    config = CONFIGS[size]
    cache_dir = Path(cache_dir)
    root = cache_dir / f"digits-{size}-{config.key()}"
    register_arch(config.arch, config.model_config, cache_dir / "open_clip_configs" / config.key())

    def build(tmp: Path) -> None:
        from bench.digits_build import build_files

        build_files(config, tmp, verbose=verbose)

    return load_suite(cached_build(root, build, f"digits:{size}", verbose))


def load_suite(root: Path) -> Suite:
    """A Suite from a built directory's suite.json."""
    info = json.loads((root / "suite.json").read_text())
    tasks = [
        SuiteTask(
            name=t["name"], attribute=t["attribute"], domain=t["domain"],
            classnames=t["classnames"], templates=t["templates"],
            checkpoint=root / f"{t['name']}.safetensors",
            unlabeled=root / f"{t['name']}_unlabeled.safetensors",
            test=root / f"{t['name']}_test.safetensors",
            splits=t["splits"], zero_shot_acc=t["accuracy"]["zero_shot"],
            individual_acc=t["accuracy"]["individual"],
        )
        for t in info["tasks"]
    ]
    return Suite(
        root=root, size=info["size"], arch=info["arch"], model_config=info["model_config"],
        base=root / "base.safetensors", tasks=tasks, info=info,
    )


def export_png_archive(suite: Suite, task: str | SuiteTask, split: str, path: Path) -> Path:
    """Write a task's (transformed) images of `split` as PNGs into the .zip `path`.
    'unlabeled' / 'finetune': flat '00000.png', ... in the tensor files' order; 'test': one
    sub-folder per class index ('3/00012.png'). Through open_clip's eval transform these PNGs
    give exactly the tensors of <task>_unlabeled / <task>_test."""
    from bench.digits_data import SPLITS, digits_of, render_split, write_png_zip

    if suite.info.get("suite", "digits") != "digits":
        raise ValueError(f"export_png_archive renders digits; this is the {suite.info['suite']!r} suite")
    t = suite.task(task) if isinstance(task, str) else task
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    import numpy as np

    indices = np.asarray(t.splits[split], dtype=np.int64)
    labels = t.definition.labels(digits_of(indices)) if split == "test" else None
    return write_png_zip(render_split(t.definition, indices), Path(path), labels)


__all__ = [
    "ATTRIBUTES", "CONFIGS", "Suite", "SuiteConfig", "SuiteTask", "build_suite",
    "export_png_archive", "load_suite", "register_arch",
]
