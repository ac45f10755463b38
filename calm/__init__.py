"""CALM: Consensus-Aware Localized Merging of fine-tuned CLIP image encoders.

    from calm import MergeSpec, RunOptions, merge, save_result
    spec = MergeSpec.model_validate(yaml.safe_load(open("spec.yaml")))
    result = merge(spec, run=RunOptions(device="cuda"), on_progress=print)
    save_result(result, Path("out"), spec)

`calm.spec`, `calm.registry`, `calm.run_options`, `calm.plan`, `calm.errors`, `calm.progress`,
`calm.image_sets` and `calm.pretrained` import without torch (the web API validates specs and
data with them); everything else is loaded lazily on first use.
"""

from __future__ import annotations

from typing import Any

from calm.errors import (
    CalmError,
    CheckpointMismatchError,
    DataError,
    MergeCancelled,
    UnsafeCheckpointError,
)
from calm.progress import Progress
from calm.registry import REGISTRY
from calm.run_options import RunOptions
from calm.spec import (
    CalmOptions,
    MergeRequest,
    MergeSpec,
    ModelSpec,
    TaskArithmeticOptions,
    TaskSpec,
    TiesOptions,
)
from calm.spec_errors import SpecError

_LAZY = {
    "merge": "calm.pipeline",
    "MergeResult": "calm.result",
    "save_result": "calm.result",
    "METHODS": "calm.methods",
}

__all__ = [
    "REGISTRY",
    "CalmError",
    "CalmOptions",
    "CheckpointMismatchError",
    "DataError",
    "MergeCancelled",
    "MergeRequest",
    "MergeSpec",
    "ModelSpec",
    "Progress",
    "RunOptions",
    "SpecError",
    "TaskArithmeticOptions",
    "TaskSpec",
    "TiesOptions",
    "UnsafeCheckpointError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'calm' has no attribute {name!r}")
