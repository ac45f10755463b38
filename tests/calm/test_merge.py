"""End-to-end library merges: a tiny real CALM merge on the digits suite (fully sequential
plan), the efficient plan on random tiny checkpoints, determinism, cancellation and saving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from calm import MergeCancelled, MergeRequest, merge, save_result
from calm.progress import Progress
from tests.worker_helpers import tiny_suite

FAST = {"epochs": 4, "lr_grid": [1.0], "batch_size": 64}


@pytest.fixture(scope="module")
def suite() -> Any:
    return tiny_suite()


@pytest.fixture(scope="module")
def calm_run(suite: Any) -> tuple[MergeRequest, Any, list[Progress]]:
    spec = MergeRequest.model_validate(suite.merge_spec("calm", FAST, seed=3, run={"device": "cpu"}))
    events: list[Progress] = []
    return spec, merge(spec, on_progress=events.append), events


def test_calm_merge_end_to_end(calm_run: Any) -> None:
    spec, result, events = calm_run
    from calm.checkpoints import load_state_dict

    base = load_state_dict(spec.model.checkpoint)
    assert set(result.state_dict) == set(base)
    for name, v in base.items():  # everything outside the image tower is exactly θ0
        if not name.startswith("visual."):
            assert torch.equal(result.state_dict[name], v), name
    info = result.report["method_info"]
    assert info["plan"] == "fully_sequential" and len(info["sequential_tasks"]) == 2
    assert set(result.masks) == set(info["sequential_tasks"])
    assert all(m.dtype == torch.bool for per in result.masks.values() for m in per.values())
    acc = result.report["accuracy"]
    assert set(acc) >= {"zero_shot", "individual", "merged"}
    assert set(acc["merged"]) == {t.name for t in spec.tasks}
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(e.stage.startswith("mask:") and "mask_density" in e.metrics for e in events)


def test_every_merged_entry_comes_from_exactly_one_task(calm_run: Any) -> None:
    """Fully sequential plan: each merged weight equals θ0 + τ_t for one task t."""
    spec, result, _ = calm_run
    from calm.checkpoints import load_state_dict

    base = load_state_dict(spec.model.checkpoint)
    tuned = [load_state_dict(t.checkpoint) for t in spec.tasks]
    for name, merged in result.state_dict.items():
        if not name.startswith("visual.") or not merged.is_floating_point():
            continue
        tau_merged = merged.float() - base[name].float()
        hit = torch.zeros_like(merged, dtype=torch.bool)
        for st in tuned:
            hit |= torch.isclose(tau_merged, st[name].float() - base[name].float(), atol=1e-6)
        assert bool(hit.all()), name


def test_merge_is_bitwise_deterministic(calm_run: Any) -> None:
    spec, first, _ = calm_run
    again = merge(spec)
    for name, v in first.state_dict.items():
        assert torch.equal(v, again.state_dict[name]), name


def test_saved_merge_loads_in_open_clip_with_same_outputs(calm_run: Any, tmp_path: Path) -> None:
    import open_clip

    spec, result, _ = calm_run
    paths = save_result(result, tmp_path)
    model = open_clip.create_model(spec.model.arch, pretrained=str(paths["merged"])).eval()
    from calm.models import build_model

    ref, _ = build_model(spec.model.arch, result.state_dict)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x), ref.encode_image(x), rtol=0, atol=0)
    assert (tmp_path / "report.json").is_file() and (tmp_path / "masks.safetensors").is_file()


def test_cancellation_raises_before_anything_is_returned(suite: Any) -> None:
    spec = MergeRequest.model_validate(suite.merge_spec("calm", FAST, run={"device": "cpu"}))
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(MergeCancelled):
        merge(spec, should_cancel=cancel)


def _random_spec(make_checkpoints: Any, make_image_tensors: Any, n_tasks: int, **kw: Any) -> MergeRequest:
    ck = make_checkpoints(n_tasks=n_tasks, scale=0.05)
    tasks = [
        {"name": f"t{i}", "checkpoint": str(p), "unlabeled": str(make_image_tensors(f"u{i}", n=24, seed=i)),
         "classnames": ["cat", "dog", "bird"]}
        for i, p in enumerate(ck.tasks)
    ]
    return MergeRequest.model_validate({"model": {"arch": ck.arch, "checkpoint": str(ck.base)},
                                     "tasks": tasks, "run": {"device": "cpu"}, **kw})


def test_efficient_plan_keeps_base_group_and_masks_k_tasks(make_checkpoints: Any,
                                                           make_image_tensors: Any) -> None:
    spec = _random_spec(make_checkpoints, make_image_tensors, 5,
                        options={**FAST, "num_sequential": 2, "base_lambda": "auto"})
    result = merge(spec)
    info = result.report["method_info"]
    assert info["plan"] == "efficient"
    assert len(info["base_group"]) == 3 and len(info["sequential_tasks"]) == 2
    assert info["base_lambda"] in spec.method_options().lambda_grid
    assert set(result.masks) == set(info["sequential_tasks"])
    assert "accuracy" in result.report and result.report["accuracy"] == {}


def test_user_named_sequential_tasks_and_baselines(make_checkpoints: Any, make_image_tensors: Any) -> None:
    spec = _random_spec(make_checkpoints, make_image_tensors, 4,
                        options={**FAST, "sequential_tasks": ["t3"], "regularizer": "l1"},
                        baselines=["ties", "task_arithmetic"])
    result = merge(spec)
    info = result.report["method_info"]
    assert info["sequential_tasks"] == ["t3"] and info["chosen_by"] == "user"
    assert set(result.report["baselines_info"]) == {"ties", "task_arithmetic"}


def test_too_many_sequential_tasks_is_refused_by_the_spec(make_checkpoints: Any,
                                                          make_image_tensors: Any) -> None:
    """K vs T is checked when the spec is read, before any work."""
    for bad in ({"num_sequential": 3}, {"num_sequential": 0},
                {"sequential_tasks": ["t0", "t1", "t2"]}, {"sequential_tasks": ["t0", "t0"]},
                {"sequential_tasks": ["t1"], "num_sequential": 2}):
        with pytest.raises(ValidationError, match="num_sequential|sequential_tasks"):
            _random_spec(make_checkpoints, make_image_tensors, 3, options={**FAST, **bad})
