"""The registry of benchmark suites: one entry per suite, read by `bench.merge_quality --suite`.

    suite = build_suite("photos", size="test")     # a bench.digits_suite.Suite
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.digits_suite import Suite

SIZES = ("bench", "test")


@dataclass(frozen=True)
class SuiteEntry:
    """A suite: its module (with `build_suite(size, cache_dir, verbose)`) and one line about it."""

    name: str
    module: str
    summary: str


SUITES: dict[str, SuiteEntry] = {
    e.name: e
    for e in (
        SuiteEntry("digits", "bench.digits_suite",
                   "scikit-learn digits, tiny ViT tower (LayerNorm), 8 attribute x domain tasks"),
        SuiteEntry("photos", "bench.photos_suite",
                   "scikit-image photographs, tiny ModifiedResNet tower (BatchNorm fine-tuned in "
                   "train mode), 8 photo-operation x domain tasks"),
    )
}


def suite_names() -> list[str]:
    return list(SUITES)


def build_suite(
    name: str, size: str = "bench", cache_dir: Path = Path("bench/cache"), verbose: bool = True
) -> Suite:
    """Build (or load from the cache) suite `name` at `size` ('bench' or 'test')."""
    if name not in SUITES:
        raise KeyError(f"unknown suite {name!r}; have {suite_names()}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    module = importlib.import_module(SUITES[name].module)
    return module.build_suite(size, Path(cache_dir), verbose=verbose)
