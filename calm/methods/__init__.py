"""Registry of merge methods: name -> (options model, function). All share loading,
evaluation and saving (calm.pipeline)."""

from __future__ import annotations

from calm.methods.base import MergeMethod, MethodOutput
from calm.methods.baselines import average, task_arithmetic, ties
from calm.methods.calm_method import calm
from calm.methods.iso import iso_c, iso_cts
from calm.methods.tsv_m import tsv_m

METHODS: dict[str, MergeMethod] = {
    "calm": calm,
    "task_arithmetic": task_arithmetic,
    "ties": ties,
    "average": average,
    "tsv_m": tsv_m,
    "iso_c": iso_c,
    "iso_cts": iso_cts,
}

__all__ = ["METHODS", "MergeMethod", "MethodOutput"]
