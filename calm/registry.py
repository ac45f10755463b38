"""The one registry of merge methods: their options classes, each declaring the method's name,
its function (imported lazily by calm.methods, so this module stays torch-free for the API), and
whether it may be a baseline. Adding a method is one options class and one line here.

Everything else reads this: the spec's `method` and `baselines` choices, the typed options
union (discriminated by `method`), calm.methods.METHODS, validation messages and the docs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field

from calm.auto_options import AutoOptions
from calm.calm_options import CalmOptions
from calm.options import (
    AverageOptions,
    IsoCOptions,
    IsoCTSOptions,
    MethodOptions,
    TaskArithmeticOptions,
    TiesOptions,
    TsvMOptions,
)

OPTIONS_CLASSES: tuple[type[MethodOptions], ...] = (
    CalmOptions,
    TaskArithmeticOptions,
    TiesOptions,
    AverageOptions,
    TsvMOptions,
    IsoCOptions,
    IsoCTSOptions,
    AutoOptions,
)
REGISTRY: dict[str, type[MethodOptions]] = {cls.name(): cls for cls in OPTIONS_CLASSES}
DEFAULT_METHOD = "calm"
METHOD_NAMES: tuple[str, ...] = tuple(REGISTRY)
BASELINE_NAMES: tuple[str, ...] = tuple(n for n, cls in REGISTRY.items() if cls.baseline)

# Types built from the registry (pydantic reads them; Literal[tuple] spells the choices out).
MethodName = Literal[METHOD_NAMES]  # type: ignore[valid-type]
BaselineName = Literal[BASELINE_NAMES]  # type: ignore[valid-type]
AnyOptions = Annotated[Union[OPTIONS_CLASSES], Field(discriminator="method")]  # type: ignore[valid-type]  # noqa: UP007


def options_class(method: str) -> type[MethodOptions]:
    """The options class of `method` (KeyError for an unknown name)."""
    return REGISTRY[method]


def default_options(method: str) -> MethodOptions:
    return REGISTRY[method]()


def parse_options(method: str, raw: dict[str, Any] | None = None) -> MethodOptions:
    """`raw` validated as `method`'s options (pydantic ValidationError when it does not fit)."""
    return REGISTRY[method].model_validate({**(raw or {}), "method": method})


def methods_taking(option: str) -> list[str]:
    """The methods that have an option of this name."""
    return [name for name, cls in REGISTRY.items() if option in cls.option_names()]
