"""Known-answer fixtures for the data-free merges, produced by FusionBench's own implementations.

On small random weights (a few 2-D and other tensors, 3 and 4 tasks, fixed seeds) this runs
FusionBench's task arithmetic, TIES-merging (merge_func mean / sum / max), TSV-M (also with an
excluded key), Iso-C and Iso-CTS, and writes, per task count T:

    tests/calm/fixtures/fusionbench_T{T}.safetensors   inputs  "base/<name>", "task{i}/<name>"
                                                       outputs "<case>/<name>" (merged θ)
    tests/calm/fixtures/fusionbench.json               each case's method and settings

tests/calm/test_fusionbench_fixtures.py compares calm's functions with these outputs.
FusionBench is never a dependency of the project: run this with an interpreter that has it,
outside the project's virtual environment, e.g.

    python3 -m venv /work/fbvenv && /work/fbvenv/bin/pip install fusion-bench torch==2.14.1
    /work/fbvenv/bin/python bench/fusionbench_fixtures.py
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

OUT = Path(__file__).resolve().parents[1] / "tests" / "calm" / "fixtures"
# Every shape kind the merges treat differently: 2-D matrices (square-ish, wide, tall, and a
# rank that T does not divide), 1-D biases / norms, and a 4-D convolution (averaged).
SHAPES: dict[str, tuple[int, ...]] = {
    "conv.weight": (6, 3, 2, 2),
    "fc1.weight": (24, 16),
    "fc1.bias": (24,),
    "ln.weight": (24,),
    "ln.bias": (24,),
    "fc2.weight": (10, 24),
    "fc2.bias": (10,),
    "proj": (48, 40),
}
TASK_COUNTS = (3, 4)
# name -> (method, settings); settings use the option names of calm.spec.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "task_arithmetic": ("task_arithmetic", {"scaling": 0.3}),
    "ties_mean": ("ties", {"scaling": 1.0, "density": 0.2, "merge_func": "mean"}),
    "ties_sum": ("ties", {"scaling": 0.3, "density": 0.2, "merge_func": "sum"}),
    "ties_max": ("ties", {"scaling": 0.7, "density": 0.2, "merge_func": "max"}),
    "tsv_m": ("tsv_m", {"scaling": 1.0}),
    "tsv_m_exclude": ("tsv_m", {"scaling": 0.8, "exclude_keys": ["proj"]}),
    "iso_c": ("iso_c", {"scaling": 1.0}),
    "iso_cts": ("iso_cts", {"scaling": 1.0, "common_space_fraction": 0.8}),
}


def make_weights(num_tasks: int, seed: int) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """θ0 and θ_t = θ0 + τ_t, with τ_t a low-rank part plus noise. Two entries of fc2.bias
    cancel exactly between tasks 0 and 1 (and are 0 elsewhere), so TIES meets a zero vote."""
    g = torch.Generator().manual_seed(seed)
    base = {n: 0.5 * torch.randn(s, generator=g) for n, s in SHAPES.items()}
    base["fc2.bias"][:2] = 0.5
    tasks = []
    for t in range(num_tasks):
        tuned = {}
        for n, s in SHAPES.items():
            tau = 0.05 * torch.randn(s, generator=g)
            if len(s) == 2:
                tau += 0.1 * torch.randn(s[0], 2, generator=g) @ torch.randn(2, s[1], generator=g)
            tuned[n] = base[n] + tau
        tuned["fc2.bias"][:2] = base["fc2.bias"][:2] + (0.25 if t == 0 else -0.25 if t == 1 else 0.0)
        tasks.append(tuned)
    return base, tasks


def module_of(state: dict[str, torch.Tensor]) -> nn.Module:
    """A bare nn.Module whose state_dict is `state` (nested names become submodules)."""
    root = nn.Module()
    for name, value in state.items():
        *path, leaf = name.split(".")
        mod = root
        for part in path:
            if not hasattr(mod, part):
                mod.add_module(part, nn.Module())
            mod = getattr(mod, part)
        mod.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
    return root


def algorithm(method: str, settings: dict[str, Any]) -> Any:
    """FusionBench's algorithm object for one case, on the CPU."""
    import lightning as L
    from fusion_bench.method import (
        ISO_C_Merge,
        ISO_CTS_Merge,
        TaskArithmeticAlgorithm,
        TaskSingularVectorMerging,
        TiesMergingAlgorithm,
    )
    from fusion_bench.mixins import LightningFabricMixin

    exclude = settings.get("exclude_keys") or None
    build: dict[str, Callable[[], Any]] = {
        "task_arithmetic": lambda: TaskArithmeticAlgorithm(scaling_factor=settings["scaling"]),
        "ties": lambda: TiesMergingAlgorithm(
            scaling_factor=settings["scaling"], threshold=settings["density"], remove_keys=[],
            merge_func=settings["merge_func"]),
        "tsv_m": lambda: TaskSingularVectorMerging(alpha=settings["scaling"], exclude_keys=exclude),
        "iso_c": lambda: ISO_C_Merge(scaling_factor=settings["scaling"], exclude_keys=exclude),
        "iso_cts": lambda: ISO_CTS_Merge(
            scaling_factor=settings["scaling"],
            common_space_fraction=settings["common_space_fraction"], exclude_keys=exclude),
    }
    alg = build[method]()
    if isinstance(alg, LightningFabricMixin):  # the SVD merges take their device from Fabric
        alg.fabric = L.Fabric(accelerator="cpu", devices=1)
    return alg


def run_case(method: str, settings: dict[str, Any], base: dict[str, torch.Tensor],
             tasks: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The merged state dict FusionBench returns (fresh modules: its merges work in place)."""
    from fusion_bench.modelpool import BaseModelPool

    models = {"_pretrained_": module_of(base)}
    models.update({f"task{i}": module_of(t) for i, t in enumerate(tasks)})
    with torch.no_grad():
        merged = algorithm(method, settings).run(BaseModelPool(models))
    return {n: v.detach().clone().contiguous() for n, v in merged.state_dict().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    meta: dict[str, Any] = {"fusion_bench": version("fusion-bench"), "torch": torch.__version__,
                            "shapes": {n: list(s) for n, s in SHAPES.items()},
                            "cases": {c: {"method": m, "settings": s} for c, (m, s) in CASES.items()},
                            "files": {}}
    for num_tasks in TASK_COUNTS:
        base, tasks = make_weights(num_tasks, seed=num_tasks)
        tensors = {f"base/{n}": v for n, v in base.items()}
        for i, t in enumerate(tasks):
            tensors.update({f"task{i}/{n}": v for n, v in t.items()})
        for case, (method, settings) in CASES.items():
            merged = run_case(method, settings, base, tasks)
            tensors.update({f"{case}/{n}": v for n, v in merged.items()})
        path = args.out / f"fusionbench_T{num_tasks}.safetensors"
        save_file(tensors, str(path))
        meta["files"][path.name] = {"num_tasks": num_tasks, "seed": num_tasks}
        print(f"wrote {path} ({len(tensors)} tensors)")
    (args.out / "fusionbench.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
