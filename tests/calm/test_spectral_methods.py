"""TSV-M, Iso-C and Iso-CTS through the library: the registry and spec know them, a tiny merge
with each runs through `calm.merge` (scale chosen by pseudo-label agreement), the wrapper gives
exactly θ0 + α·(the pure function), and the published default is used without pseudo-labels."""

from __future__ import annotations

from typing import Any, get_args

import pytest
import torch

from calm import MergeRequest, MergeSpec, merge
from calm.context import MergeContext
from calm.errors import CalmError
from calm.methods import METHODS
from calm.methods.iso import iso_c, iso_c_merge, iso_cts_merge, subspace_sizes
from calm.methods.tsv_m import rank_per_task, tsv_m, tsv_merge
from calm.progress import Progress
from calm.registry import REGISTRY
from calm.spec import IsoCOptions, TsvMOptions
from calm.task_vectors import Params, TaskVectorSource
from tests.worker_helpers import tiny_suite

NEW = ("tsv_m", "iso_c", "iso_cts")


def test_every_list_of_method_names_agrees() -> None:
    from core.job_request import JobCreate

    names = set(METHODS)
    assert set(NEW) <= names == set(REGISTRY)
    assert set(get_args(MergeSpec.model_fields["method"].annotation)) == names
    assert set(get_args(JobCreate.model_fields["method"].annotation)) == names
    for model in (MergeSpec, JobCreate):
        (baseline,) = get_args(model.model_fields["baselines"].annotation)
        assert set(get_args(baseline)) == names - {"calm", "auto"}


def test_subspace_sizes_follow_fusionbench_rounding() -> None:
    assert subspace_sizes(16, 4, 0.8) == (12, 1)
    assert subspace_sizes(10, 4, 0.8) == (10, 0)  # round(0.5) == 0: halves go to even
    assert subspace_sizes(10, 3, 0.8) == (7, 1)
    assert subspace_sizes(10, 6, 0.1) == (4, 1)  # round(9/6)·6 = 12 > 10: one fewer each
    assert rank_per_task(10, 4, None) == 2 and rank_per_task(48, 3, None) == 16


def test_new_methods_merge_through_the_library(make_checkpoints: Any, make_image_tensors: Any) -> None:
    """One load, one pseudo-label pass: Iso-CTS as the method, TSV-M and Iso-C beside it."""
    ck = make_checkpoints(n_tasks=3, scale=0.05)
    tasks = [{"name": f"t{i}", "checkpoint": str(p), "classnames": ["cat", "dog", "bird"],
              "unlabeled": str(make_image_tensors(f"u{i}", n=16, seed=i))}
             for i, p in enumerate(ck.tasks)]
    spec = MergeRequest.model_validate({
        "model": {"arch": ck.arch, "checkpoint": str(ck.base)}, "tasks": tasks, "run": {"device": "cpu"},
        "method": "iso_cts", "options": {"scaling_grid": [0.5, 1.0]},
        "baselines": ["tsv_m", "iso_c"]})
    events: list[Progress] = []
    result = merge(spec, on_progress=events.append)
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"iso_cts", "tsv_m", "iso_c", "scale_search"} <= {e.stage for e in events}
    report = result.report
    info = report["method_info"]
    assert info["scaling"] in (0.5, 1.0) and info["scaling_chosen_by"] == "pseudo_label_agreement"
    assert info["common_space_fraction"] == 0.8
    for name in ("tsv_m", "iso_c"):
        assert report["baselines_info"][name]["scaling"] in TsvMOptions().scaling_grid
        assert set(report["pseudo_label_agreement"][name]) == {"t0", "t1", "t2"}
    taus = _taus(ck.base_state, ck.task_states)
    expected = iso_cts_merge(lambda: iter(taus))
    for name, v in ck.base_state.items():
        got = result.state_dict[name]
        if name in expected:
            torch.testing.assert_close(got, v + info["scaling"] * expected[name])
        else:
            assert torch.equal(got, v), name


def _taus(base: dict[str, torch.Tensor], tuned: list[dict[str, torch.Tensor]]) -> list[Params]:
    names = [n for n, v in base.items() if n.startswith("visual.") and v.is_floating_point()]
    return [{n: st[n].float() - base[n].float() for n in names} for st in tuned]


def _context(make_checkpoints: Any) -> tuple[MergeContext, list[Params]]:
    """A context with task vectors but no unlabeled data (no pseudo-labels), and the τ_t."""
    ck = make_checkpoints(n_tasks=3)
    taus = _taus(ck.base_state, ck.task_states)
    theta0 = {n: ck.base_state[n].float() for n in taus[0]}
    cpu = torch.device("cpu")
    vectors = TaskVectorSource(ck.base_state, theta0, {f"t{i}": p for i, p in enumerate(ck.tasks)}, cpu)
    ctx = MergeContext(visual=torch.nn.Identity(), theta0=theta0, vectors=vectors, tasks={}, device=cpu)
    return ctx, taus


def test_wrappers_use_the_published_default_without_pseudo_labels(make_checkpoints: Any) -> None:
    ctx, taus = _context(make_checkpoints)
    out = iso_c(ctx, IsoCOptions())
    assert out.info == {"scaling": 1.0, "scaling_chosen_by": "published_default"}
    for name, v in iso_c_merge(iter(taus)).items():
        torch.testing.assert_close(out.tau[name], v)
    out = tsv_m(ctx, TsvMOptions(scaling=0.7))
    assert out.info["scaling_chosen_by"] == "user"
    for name, v in tsv_merge(iter(taus), 3).items():
        torch.testing.assert_close(out.tau[name], 0.7 * v)


def test_bad_options_are_clear_errors(make_checkpoints: Any) -> None:
    ctx, _ = _context(make_checkpoints)
    with pytest.raises(CalmError) as err:
        tsv_m(ctx, TsvMOptions(rank_share=0.5))  # 3 tasks × 0.5 > the rank
    assert err.value.code == "invalid_options"
    with pytest.raises(CalmError) as err:
        iso_c(ctx, IsoCOptions(exclude_keys=["visual.nope"]))
    assert err.value.code == "invalid_options" and "visual.nope" in err.value.message


def test_tsv_m_on_the_tiny_suite_beats_zero_shot() -> None:
    suite = tiny_suite()
    spec = MergeRequest.model_validate(suite.merge_spec(
        "tsv_m", {"scaling_grid": [1.0, 1.5]}, seed=3, run={"device": "cpu"}))
    report = merge(spec).report
    acc = report["accuracy"]
    assert set(acc["merged"]) == {t.name for t in spec.tasks}
    mean = {k: sum(v.values()) / len(v) for k, v in acc.items()}
    assert mean["merged"] > mean["zero_shot"] + 0.05
    assert report["method_info"]["scaling"] in (1.0, 1.5)
