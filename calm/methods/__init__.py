"""The merge methods' functions, looked up in calm.registry (name -> options class, which
names its function) and imported on first use. All share loading, evaluation and saving
(calm.pipeline)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from calm.methods.base import MergeMethod, MethodOutput
from calm.registry import REGISTRY


def method_function(name: str) -> MergeMethod:
    """The function of method `name` (KeyError for a name calm.registry does not hold)."""
    module, _, attr = REGISTRY[name].function.partition(":")
    return getattr(importlib.import_module(module), attr)


class _Methods(Mapping[str, MergeMethod]):
    """name -> function, read from the registry."""

    def __getitem__(self, name: str) -> MergeMethod:
        return method_function(name)

    def __iter__(self) -> Iterator[str]:
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)


METHODS: Mapping[str, MergeMethod] = _Methods()

__all__ = ["METHODS", "MergeMethod", "MethodOutput", "method_function"]
