"""Defaults that transfer (issue 7) on other towers: BatchNorm statistics per checkpoint and
for merged models, `output_tokens` towers, heads from files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from calm import MergeRequest, merge
from calm.errors import DataError
from calm.heads import load_head, zero_shot_head
from calm.models import build_model
from tests.calm.towers import RESNET, TOKENS, register, write_checkpoints

FAST = {"epochs": 1, "lr_grid": [1.0], "batch_size": 8, "base_lambda": 0.3}


def _images(path: Path, n: int, side: int, classes: int | None = None, seed: int = 0) -> Path:
    gen = torch.Generator().manual_seed(seed)
    tensors = {"images": torch.randn(n, 3, side, side, generator=gen)}
    if classes:
        tensors["labels"] = torch.arange(n) % classes
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def _spec(arch: str, side: int, tmp_path: Path, n_tasks: int = 3, **kw: Any) -> MergeRequest:
    base, paths, _ = write_checkpoints(arch, tmp_path / arch, n_tasks)
    tasks = [{"name": f"t{i}", "checkpoint": str(p), "classnames": ["a", "b", "c"],
              "unlabeled": str(_images(tmp_path / f"u{i}.safetensors", 24, side, seed=i)),
              "eval": str(_images(tmp_path / f"e{i}.safetensors", 12, side, 3, seed=9 + i))}
             for i, p in enumerate(paths)]
    return MergeRequest.model_validate({"model": {"arch": arch, "checkpoint": str(base)},
                                     "tasks": tasks, "run": {"device": "cpu"}, "options": FAST, **kw})


@pytest.fixture(scope="module")
def resnet() -> str:
    return register("calm-test-tiny-rn", RESNET)


def test_individual_models_run_with_their_own_batchnorm_statistics(resnet: str,
                                                                   tmp_path: Path) -> None:
    spec = _spec(resnet, 32, tmp_path, method="average", options={})
    result = merge(spec)
    for task in spec.tasks:  # the user's model exactly: open_clip with the task's state dict
        model, _ = build_model(resnet, load_file(str(task.checkpoint)))
        ev = load_file(str(task.eval))
        head = zero_shot_head(model, resnet, task.classnames, task.resolved_templates())
        with torch.no_grad():
            feats = model.encode_image(ev["images"])  # the module's own forward, own buffers
        acc = float(((feats @ head.t()).argmax(1) == ev["labels"]).float().mean())
        assert result.report["accuracy"]["individual"][task.name] == pytest.approx(acc)
    assert result.report["buffers"] == "reestimate"  # 'auto': the tasks' statistics differ


@pytest.mark.parametrize("policy", ["base", "average", "reestimate"])
def test_merged_buffers_follow_the_policy(resnet: str, tmp_path: Path, policy: str) -> None:
    spec = _spec(resnet, 32, tmp_path, buffers=policy, method="task_arithmetic",
                 options={"scaling": 0.3}, evaluate=False)
    result = merge(spec)
    base = load_file(str(spec.model.checkpoint))
    tasks = [load_file(str(t.checkpoint)) for t in spec.tasks]
    name = "visual.bn1.running_var"
    got = result.state_dict[name]
    if policy == "base":
        assert torch.equal(got, base[name])
    elif policy == "average":
        torch.testing.assert_close(got, torch.stack([t[name] for t in tasks]).mean(0))
    else:  # recomputed on the unlabeled inputs through the merged weights
        assert not torch.equal(got, base[name]) and not any(torch.equal(got, t[name]) for t in tasks)
        assert result.state_dict["visual.bn1.num_batches_tracked"].dtype == torch.int64
    assert result.report["buffers"] == policy


def test_calm_merges_a_batchnorm_tower(resnet: str, tmp_path: Path) -> None:
    result = merge(_spec(resnet, 32, tmp_path, baselines=["average"]))
    assert set(result.report["accuracy"]) >= {"individual", "merged", "average"}
    model, _ = build_model(resnet, result.state_dict)  # loads strictly, buffers included
    assert model is not None


def test_mask_training_refreshes_batchnorm_statistics(resnet: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """buffer_refresh_every: the statistics the masks train with are re-estimated for the
    current soft merge every N epochs — one more re-estimation per refresh, and a different
    merge than with the step's starting statistics alone."""
    import calm.buffers

    calls: list[int] = []
    real = calm.buffers.reestimate

    def counted(*args: Any, **kw: Any) -> Any:
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(calm.buffers, "reestimate", counted)
    counts, states = {}, {}
    for every in (0, 1):
        calls.clear()
        opts = {**FAST, "epochs": 3, "lr_grid": [30.0],
                "buffer_refresh_every": every}
        result = merge(_spec(resnet, 32, tmp_path / str(every), options=opts, evaluate=False))
        counts[every], states[every] = len(calls), result.state_dict
        steps = len(result.report["method_info"]["steps"])
    assert counts[1] == counts[0] + 3 * steps  # one refresh per epoch of each sequential step
    assert any(not torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_output_tokens_towers_use_the_pooled_output(tmp_path: Path) -> None:
    arch = register("calm-test-tiny-tokens", TOKENS)
    result = merge(_spec(arch, 16, tmp_path))
    assert set(result.report["accuracy"]["merged"]) == {"t0", "t1", "t2"}


def test_heads_from_files(tmp_path: Path) -> None:
    w = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    save_file({"weight": w}, str(tmp_path / "unit.safetensors"))
    torch.testing.assert_close(load_head(tmp_path / "unit.safetensors", 8, 100.0), 100 * w)
    save_file({"weight": 2 * w, "logit_scale": torch.tensor(2.0)}, str(tmp_path / "s.safetensors"))
    torch.testing.assert_close(load_head(tmp_path / "s.safetensors", 8, 100.0),
                               w * torch.tensor(2.0).exp())
    save_file({"weight": 7 * w}, str(tmp_path / "scaled.safetensors"))
    torch.testing.assert_close(load_head(tmp_path / "scaled.safetensors", 8, 100.0), 7 * w)
    with pytest.raises(DataError, match="3 rows but the task lists 4 class names"):
        load_head(tmp_path / "unit.safetensors", 8, 100.0, num_classes=4)
    save_file({"weight": w.t().contiguous()}, str(tmp_path / "t.safetensors"))
    with pytest.raises(DataError, match="transposed"):
        load_head(tmp_path / "t.safetensors", 8, 100.0)


def test_default_templates_are_the_clip_ensemble() -> None:
    from calm.spec import DEFAULT_TEMPLATES, TaskSpec

    task = TaskSpec(name="x", checkpoint="c", unlabeled="u", classnames=["a", "b"])
    assert task.resolved_templates() == list(DEFAULT_TEMPLATES) and len(DEFAULT_TEMPLATES) == 7
