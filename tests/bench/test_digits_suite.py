"""The digits task suite (size "test"): files, spec, splits, real accuracies, cache, PNG export."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from bench.digits_suite import Suite, build_suite, export_png_archive, load_suite
from calm.heads import logits, zero_shot_head
from calm.spec import MergeSpec
from tests.worker_helpers import tiny_suite


@pytest.fixture(scope="module")
def suite() -> Suite:
    """The shared tiny suite (built once per checkout into bench/cache, like the other tests)."""
    return tiny_suite()


def _model(suite: Suite, checkpoint: Path) -> torch.nn.Module:
    return open_clip.create_model(suite.arch, pretrained=str(checkpoint)).eval()


@torch.no_grad()
def _accuracy(model: torch.nn.Module, head: torch.Tensor, path: Path) -> float:
    data = load_file(str(path))
    preds = logits(model.encode_image(data["images"]), head).argmax(1)
    return (preds == data["labels"]).float().mean().item()


def test_files_and_tensor_layout(suite: Suite) -> None:
    assert suite.base.is_file() and len(suite.tasks) >= 3
    side = suite.model_config["vision_cfg"]["image_size"]
    for t in suite.tasks:
        unlabeled = load_file(str(t.unlabeled))
        assert set(unlabeled) == {"images"}  # the merge never sees unlabeled labels
        assert unlabeled["images"].dtype == torch.float32
        assert unlabeled["images"].shape == (len(t.splits["unlabeled"]), 3, side, side)
        test = load_file(str(t.test))
        assert test["labels"].dtype == torch.int64
        assert test["images"].shape[0] == test["labels"].shape[0] == len(t.splits["test"])
        assert int(test["labels"].max()) < len(t.classnames)


def test_merge_spec_validates(suite: Suite) -> None:
    spec = MergeSpec.model_validate(
        suite.merge_spec("ties", {"density": 0.3}, seed=3, baselines=["average"])
    )
    assert spec.method == "ties" and spec.seed == 3 and spec.model.arch == suite.arch
    assert spec.model.custom_config == suite.model_config
    assert [t.name for t in spec.tasks] == [t.name for t in suite.tasks]
    assert all(t.eval is not None and t.eval.is_file() for t in spec.tasks)
    assert MergeSpec.model_validate(suite.merge_spec()).method == "calm"


def test_splits_disjoint(suite: Suite) -> None:
    pretrain = set(suite.info["pretrain_split"])
    for t in suite.tasks:
        parts = [set(t.splits[s]) for s in ("finetune", "unlabeled", "test")]
        assert all(parts) and sum(map(len, parts)) == len(set.union(*parts))
        assert not pretrain & set.union(*parts)
    # one held-out test set, never trained on by any task
    trained = set.union(*(set(t.splits["finetune"]) for t in suite.tasks))
    assert not trained & set(suite.tasks[0].splits["test"])


def test_individual_beats_zero_shot(suite: Suite) -> None:
    base = _model(suite, suite.base)
    base_sd = base.state_dict()
    for t in suite.tasks:
        head = zero_shot_head(base, suite.arch, t.classnames, t.templates)
        zero_shot = _accuracy(base, head, t.test)
        model = _model(suite, t.checkpoint)
        individual = _accuracy(model, head, t.test)
        assert individual > zero_shot + 0.05, (t.name, zero_shot, individual)
        assert individual == pytest.approx(t.individual_acc, abs=1e-3)
        # only the image tower moved
        sd = model.state_dict()
        assert all(torch.equal(sd[k], v) for k, v in base_sd.items() if not k.startswith("visual"))
        assert any(not torch.equal(sd[k], v) for k, v in base_sd.items() if k.startswith("visual"))


def test_png_archive_matches_tensors(suite: Suite, tmp_path: Path) -> None:
    _, _, preprocess = open_clip.create_model_and_transforms(suite.arch)
    t = suite.tasks[1]
    path = export_png_archive(suite, t.name, "unlabeled", tmp_path / "u.zip")
    with zipfile.ZipFile(path) as zf:
        names = sorted(zf.namelist())
        images = torch.stack([preprocess(Image.open(io.BytesIO(zf.read(n)))) for n in names])
    assert torch.equal(images, load_file(str(t.unlabeled))["images"])

    path = export_png_archive(suite, t, "test", tmp_path / "t.zip")
    with zipfile.ZipFile(path) as zf:
        labels = sorted((n.split("/")[1], int(n.split("/")[0])) for n in zf.namelist())
    assert np.array_equal([c for _, c in labels], load_file(str(t.test))["labels"].numpy())


def test_second_build_is_cache_hit(suite: Suite) -> None:
    mtime = suite.base.stat().st_mtime_ns
    start = time.perf_counter()
    again = build_suite("test", suite.root.parent, verbose=False)
    assert time.perf_counter() - start < 5
    assert again.root == suite.root and again.base.stat().st_mtime_ns == mtime
    assert load_suite(suite.root).info["key"] == suite.info["key"]
