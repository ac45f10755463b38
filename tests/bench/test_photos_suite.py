"""The photos suite (size "test"): a BatchNorm ResNet tower, splits by photo, per-task BN
statistics, files readable by the library's loaders, and the suite registry."""

from __future__ import annotations

import time
from pathlib import Path

import open_clip
import pytest
import torch

from bench import merge_quality, suite_check
from bench.digits_suite import Suite, export_png_archive
from bench.photos_data import PHOTOS, TEST_PHOTOS
from bench.suites import build_suite, suite_names
from calm.checkpoints import load_state_dict
from calm.data import load_images, load_labelled
from calm.spec import MergeSpec
from tests.worker_helpers import SUITE_CACHE


@pytest.fixture(scope="module")
def suite() -> Suite:
    """Built once per checkout into bench/cache (seconds), then a cache hit."""
    return build_suite("photos", "test", SUITE_CACHE, verbose=False)


def _bn_buffers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith("visual.") and "running_" in k}


def test_resnet_tower_and_loaders(suite: Suite) -> None:
    assert isinstance(suite.model_config["vision_cfg"]["layers"], list)
    model, _, preprocess = open_clip.create_model_and_transforms(suite.arch)
    assert type(model.visual).__name__ == "ModifiedResNet"
    side = suite.model_config["vision_cfg"]["image_size"]
    assert side % 32 == 0
    base = load_state_dict(suite.base)
    assert _bn_buffers(base), "a BatchNorm tower has running statistics"
    for t in suite.tasks:
        model.load_state_dict(load_state_dict(t.checkpoint))  # complete and of this arch
        unlabeled = load_images(t.unlabeled, preprocess)
        images, labels = load_labelled(t.test, preprocess)
        sizes = next(m["sizes"] for m in suite.info["tasks"] if m["name"] == t.name)
        assert unlabeled.materialize().dtype == torch.float32
        assert unlabeled.shape == (sizes["unlabeled"], 3, side, side)
        assert images.shape == (sizes["test"], 3, side, side) and labels.shape == (sizes["test"],)
        assert sorted(labels.unique().tolist()) == list(range(len(t.classnames)))


def test_splits_disjoint_by_photo(suite: Suite) -> None:
    test_photos = {PHOTOS.index(n) for n in TEST_PHOTOS}
    assert set(suite.info["test_photos"]) == test_photos
    assert not set(suite.info["pretrain_split"]) & test_photos
    for t in suite.tasks:
        parts = [set(t.splits[s]) for s in ("finetune", "unlabeled", "test")]
        assert all(parts) and sum(map(len, parts)) == len(set.union(*parts)), t.name
        assert parts[2] == test_photos


def test_every_task_has_its_own_batchnorm_statistics(suite: Suite) -> None:
    base = load_state_dict(suite.base)
    buffers = [_bn_buffers(load_state_dict(t.checkpoint)) for t in suite.tasks]
    for t, own in zip(suite.tasks, buffers, strict=True):
        assert any(not torch.equal(v, base[k]) for k, v in own.items()), t.name
    for a, b in zip(buffers, buffers[1:], strict=False):
        assert any(not torch.equal(v, b[k]) for k, v in a.items())


def test_merge_spec_validates(suite: Suite, tmp_path: Path) -> None:
    spec = MergeSpec.model_validate(suite.merge_spec("ties", seed=3, baselines=["average"]))
    assert spec.model.arch == suite.arch and spec.model.custom_config == suite.model_config
    assert [t.name for t in spec.tasks] == [t.name for t in suite.tasks]
    with pytest.raises(ValueError, match="photos"):
        export_png_archive(suite, suite.tasks[0], "test", tmp_path / "x.zip")


def test_accuracies_use_each_models_own_buffers(suite: Suite) -> None:
    """suite_check recomputes every model with its full state dict (own BN statistics): the
    individual accuracies match those recorded at build time and beat zero-shot."""
    report = suite_check.check(suite, grid=[0.3, 1.0])
    for t in suite.tasks:
        assert report["zero_shot"][t.name] == pytest.approx(t.zero_shot_acc, abs=1e-3)
        assert report["individual"][t.name] == pytest.approx(t.individual_acc, abs=1e-3)
        assert t.individual_acc > t.zero_shot_acc + 0.05, (t.name, t.zero_shot_acc)
    for key in ("task_arithmetic_base_buffers", "task_arithmetic_average_buffers"):
        assert all(0.0 <= report[key][t.name] <= 1.0 for t in suite.tasks), key
        assert report[key]["lambda"] in (0.3, 1.0)


def test_registry_and_cli(suite: Suite, capsys: pytest.CaptureFixture[str]) -> None:
    assert {"digits", "photos"} <= set(suite_names())
    assert merge_quality.main(["--list-suites"]) == 0
    assert capsys.readouterr().out.split() == suite_names()
    assert merge_quality.default_out("photos").name == "merge_quality_photos.json"
    with pytest.raises(KeyError, match="unknown suite"):
        build_suite("nope", "test", SUITE_CACHE)
    start = time.perf_counter()
    again = build_suite("photos", "test", SUITE_CACHE, verbose=False)
    assert time.perf_counter() - start < 5 and again.root == suite.root
