"""The spec without torch: one registry drives the method choices and the options union; the
plan rules and their description; errors that say what to do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from calm.calm_options import CalmOptions
from calm.options import OptionError, TiesOptions
from calm.plan import check_plan, describe, plan_sizes, split
from calm.registry import BASELINE_NAMES, REGISTRY
from calm.spec import MergeRequest, MergeSpec
from calm.spec_errors import SpecError, parse

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["a", "b", "c", "d", "e"]


def _spec(**kw: Any) -> dict[str, Any]:
    tasks = [{"name": n, "checkpoint": f"{n}.safetensors", "unlabeled": f"{n}.zip", "classnames": ["x", "y"]}
             for n in kw.pop("names", NAMES)]
    return {"model": {"arch": "ViT-B-32", "checkpoint": "base.safetensors"}, "tasks": tasks, **kw}


def test_the_registry_is_the_one_list() -> None:
    assert all(cls.name() == name and ":" in cls.function for name, cls in REGISTRY.items())
    assert "calm" not in BASELINE_NAMES and set(BASELINE_NAMES) < set(REGISTRY)
    spec = MergeSpec.model_validate(_spec(method="ties", options={"density": 0.5}))
    assert isinstance(spec.options, TiesOptions) and spec.options.density == 0.5
    assert "method" not in spec.spec_json()["options"]  # the union's tag stays out of dumps
    assert MergeSpec.model_validate(spec.spec_json()) == spec  # round trip
    assert MergeSpec(**{**_spec(), "options": TiesOptions()}).method == "ties"  # implied by the options
    schema = MergeRequest.model_json_schema()["properties"]["options"]
    assert set(schema["discriminator"]["mapping"]) == set(REGISTRY)


def test_the_spec_imports_without_torch() -> None:
    code = ("import sys, calm, calm.spec, calm.registry, calm.plan, calm.spec_file, calm.spec_errors; "
            "import core.job_request; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_plan_rules() -> None:
    assert plan_sizes(CalmOptions(), 4) == [3] and plan_sizes(CalmOptions(), 8) == [2, 7]
    assert plan_sizes(CalmOptions(sequential_tasks=["c"]), 8) == [1]
    assert split(NAMES, ["e"]) == (["a", "b", "c", "d"], ["e"], "efficient")
    assert split(NAMES[:3], ["c"]) == (["a"], ["b", "c"], "fully_sequential")  # |G0| ≤ 2
    with pytest.raises(OptionError) as err:
        check_plan(CalmOptions(num_sequential=3), NAMES[:3])
    assert err.value.field == "num_sequential" and "T−1 = 2 for 3 tasks" in str(err.value)
    with pytest.raises(OptionError, match="names unknown tasks"):
        check_plan(CalmOptions(sequential_tasks=["zz"]), NAMES)


def test_the_plan_in_words() -> None:
    auto = describe(CalmOptions(), NAMES)
    assert auto[0] == ("auto: efficient K=2 and fully sequential K=4, the better on held-out "
                       "pseudo-labels")
    one = describe(CalmOptions(num_sequential=1), NAMES[:3])  # the |G0| ≤ 2 rule is said aloud
    assert one[0].startswith("fully sequential K=2") and "so 2 tasks get masks" in one[1]
    named = describe(CalmOptions(sequential_tasks=["b", "c"]), NAMES[:3])
    assert named[0] == "fully sequential K=2: base a at full strength, then masks for b, c"
    spec = MergeSpec.model_validate(_spec(baselines=["ties"], options={"sequential_tasks": ["e"]}))
    lines = spec.describe()
    assert "efficient K=1: base group a, b, c, d by task arithmetic" in lines[1]
    assert lines[-2].startswith("baseline ties: TIES: keep the top 20%")


def test_errors_name_the_field_and_the_way_out() -> None:
    cases = [
        (_spec(options={"num_sequentail": 1}), "options.num_sequentail", "did you mean 'num_sequential'"),
        (_spec(method="ties", options={"epochs": 3}), "options.epochs", "'epochs' is an option of 'calm'"),
        (_spec(method="tsv_m", options={"rank_share": 0.5}), "options.rank_share", "use at most 1/T = 0.2"),
        (_spec(baselines=["calm"]), "baselines.0", "'calm' cannot be a baseline"),
        (_spec(run={"device": "cpu"}), "run", "belongs to a spec file or request (calm.MergeRequest)"),
        (_spec(eval_batch_size=8), "eval_batch_size", "is a run option"),
        (_spec(modle=1), "modle", "did you mean 'model'"),
    ]
    for data, loc, text in cases:
        with pytest.raises(SpecError) as err:
            parse(MergeSpec, data)
        assert any(p.loc == loc and text in p.message for p in err.value.problems), err.value.problems
    request = parse(MergeRequest, _spec(run={"device": "cpu"}, metadata={"team": "x"}))
    assert request.run.device == "cpu" and "run" not in request.spec_json()
