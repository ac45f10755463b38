"""A merge result shaped like today's pipeline output, built by hand on the tiny arch (no merge
run): the input of the result-folder, report and browser tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

TASKS = ("t0", "t1", "t2")
REPORT: dict[str, Any] = {
    "method": "calm", "seed": 5, "run": {"device": "cpu"}, "tasks": list(TASKS),
    "accuracy": {
        "zero_shot": {"t0": 0.41, "t1": 0.5, "t2": 0.62},
        "individual": {"t0": 0.9, "t1": 0.8, "t2": 0.85},
        "merged": {"t0": 0.86, "t1": 0.71, "t2": 0.8},
        "task_arithmetic": {"t0": 0.6, "t1": 0.55, "t2": 0.7},
    },
    "samples": {t: 20 for t in TASKS},
    "average": {"zero_shot": 0.51, "individual": 0.85, "merged": 0.79, "task_arithmetic": 0.617},
    "normalized": {"zero_shot": 0.6, "individual": 1.0, "merged": 0.93, "task_arithmetic": 0.72},
    "pseudo_label_agreement": {"merged": {t: 0.9 for t in TASKS}, "task_arithmetic": {t: 0.7 for t in TASKS}},
    "pseudo_labels": {t: {"unlabeled": 30, "selected": 27} for t in TASKS},
    "method_info": {
        "plan": "efficient", "base_group": ["t2"], "sequential_tasks": ["t1", "t0"], "base_lambda": 0.3,
        "chosen_by": "agreement",
        "steps": {"t1": {"lr_relative": 1.0, "lr_scores": {"1.0": 0.75}, "density": 0.01},
                  "t0": {"lr_relative": 3.0, "lr_scores": {"1.0": 0.6, "3.0": 0.7}, "density": 0.002}},
    },
    "baselines_info": {"task_arithmetic": {"scaling": 0.4}},
    "timings": {"load": 0.5, "method:calm": 2.0},
}


@pytest.fixture
def tiny_result(tiny_arch: str, tiny_base_state: dict[str, Any]) -> Any:
    """MergeResult: the tiny base perturbed, masks for two sequential tasks (every 7th / 50th
    entry set, and an empty tensor), and REPORT with the arch filled in."""
    import torch

    from calm.result import MergeResult

    state = {k: v + 0.01 if v.is_floating_point() and k.startswith("visual.") else v
             for k, v in tiny_base_state.items()}
    visual = [k for k, v in tiny_base_state.items() if k.startswith("visual.") and v.is_floating_point()]
    masks = {
        task: {k: torch.arange(tiny_base_state[k].numel()).reshape(tiny_base_state[k].shape) % step == 0
               for k in visual}
        for task, step in (("t1", 7), ("t0", 50))
    }
    masks["t0"]["visual.proj"] = torch.zeros_like(masks["t0"]["visual.proj"])
    return MergeResult(state, masks, {**REPORT, "arch": tiny_arch})


@pytest.fixture
def tiny_spec(tiny_arch: str, tiny_config: dict[str, Any], tmp_path: Path) -> Any:
    from calm.spec import MergeRequest

    tasks = [{"name": t, "checkpoint": str(tmp_path / f"{t}.safetensors"),
              "unlabeled": str(tmp_path / f"{t}.zip"), "classnames": ["cat", "dog"]} for t in TASKS]
    return MergeRequest.model_validate({
        "model": {"arch": tiny_arch, "custom_config": tiny_config,
                  "checkpoint": str(tmp_path / "base.safetensors")},
        "tasks": tasks, "method": "calm", "options": {"epochs": 3}, "seed": 5,
        "baselines": ["task_arithmetic"], "run": {"device": "cpu"},
    })
