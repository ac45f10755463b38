"""calm's merge arithmetic against FusionBench's own outputs on the same weights (known answers
produced by bench/fusionbench_fixtures.py and committed; FusionBench itself is not needed here).

Print the max |diff| of every case: `PYTHONPATH=$PWD .venv/bin/python -m
tests.calm.test_fusionbench_fixtures`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from calm.methods.baselines import sum_task_vectors, ties_merge
from calm.methods.iso import iso_c_merge, iso_cts_merge
from calm.methods.tsv_m import tsv_merge
from calm.task_vectors import Params, subtract

FIXTURES = Path(__file__).parent / "fixtures"
META: dict[str, Any] = json.loads((FIXTURES / "fusionbench.json").read_text())
# Where the conventions agree, element-wise sums and selections: float32 rounding only.
# The singular-vector merges also differ in LAPACK rounding and product order.
TOLERANCE = {"task_arithmetic": 1e-6, "ties": 1e-6, "tsv_m": 1e-5, "iso_c": 1e-5, "iso_cts": 1e-5}
# The singular-vector merges run in float64 here, so the check measures the algorithm and not
# the LAPACK build: FusionBench's float32 answers themselves carry up to 7e-6 of rounding (their
# distance to the float64 result), and a float32 run of calm adds its own, which depends on the
# torch build (4.8e-7 on the build that made the fixtures, 1.3e-5 on torch 2.14.1+cu130).
FLOAT64 = {"tsv_m", "iso_c", "iso_cts"}


def _split(tensors: dict[str, torch.Tensor], prefix: str) -> Params:
    return {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith(prefix + "/")}


def merged_tau(method: str, settings: dict[str, Any], taus: list[Params]) -> Params:
    """calm's merged task vector (before the global scale) for one fixture case."""
    exclude = set(settings.get("exclude_keys", []))
    if method == "task_arithmetic":
        return sum_task_vectors(iter(taus))[0]
    if method == "ties":
        return ties_merge(lambda: iter(taus), settings["density"], settings["merge_func"])
    if method == "tsv_m":
        return tsv_merge(iter(taus), len(taus), exclude=exclude)
    if method == "iso_c":
        return iso_c_merge(iter(taus), exclude)
    if method == "iso_cts":
        return iso_cts_merge(lambda: iter(taus), settings["common_space_fraction"], exclude)
    raise KeyError(method)


def max_diff(file: str, case: str, device: str = "cpu") -> float:
    """max |θ_calm − θ_FusionBench| over every tensor of one case, calm computing on `device`."""
    spec = META["cases"][case]
    dtype = torch.float64 if spec["method"] in FLOAT64 else torch.float32
    tensors = {k: v.to(device, dtype) for k, v in load_file(str(FIXTURES / file)).items()}
    num_tasks = META["files"][file]["num_tasks"]
    base = _split(tensors, "base")
    taus = [subtract(_split(tensors, f"task{i}"), base) for i in range(num_tasks)]
    tau = merged_tau(spec["method"], spec["settings"], taus)
    expected = _split(tensors, case)
    assert set(tau) == set(expected) == set(base)
    lam = spec["settings"]["scaling"]
    return max(float((base[n] + lam * tau[n] - expected[n]).abs().max()) for n in base)


CASES = [(f, c) for f in META["files"] for c in META["cases"]]
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("file", "case"), CASES)
def test_matches_fusionbench(file: str, case: str, device: str) -> None:
    assert max_diff(file, case, device) <= TOLERANCE[META["cases"][case]["method"]]


def test_fixture_has_a_zero_sign_election() -> None:
    """The fixture really exercises TIES's majority rule: an exact cancellation whose entry
    FusionBench fills from the majority-signed task (our old rule dropped it to 0)."""
    tensors = load_file(str(FIXTURES / "fusionbench_T4.safetensors"))
    tau = (tensors["ties_mean/fc2.bias"] - tensors["base/fc2.bias"])[:2]
    assert torch.allclose(tau.abs(), torch.full((2,), 0.25))


if __name__ == "__main__":
    for device in DEVICES:
        for f, c in CASES:
            method = META["cases"][c]["method"]
            print(f"{device:4s} {f:28s} {c:16s} max|diff| {max_diff(f, c, device):.2e}  "
                  f"(tolerance {TOLERANCE[method]:.0e})")
