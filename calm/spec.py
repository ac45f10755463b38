"""What to merge: one schema for the library, `calm-merge`, `calm-client` and the REST API.
Pure pydantic: no torch here (the API validates with it).

`MergeSpec[Ref]` is generic over its file references: `MergeSpec` (= `MergeSpec[Path]`) holds
local paths (library, CLI, client), the service's `JobCreate` is `MergeRequest[FileId]`
(core.job_request). `options` is a union discriminated by `method`, built from calm.registry.
How to run (device, precision, batch sizes) is calm.run_options.RunOptions; a spec file or a
REST body carries it as `run:` (MergeRequest).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any, Generic, Literal

from pydantic import (
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from calm.calm_options import CalmOptions
from calm.inputs import (
    DEFAULT_TEMPLATES,
    FileRef,
    ModelSpec,
    Ref,
    StrictModel,
    TaskSpec,
)
from calm.options import (
    AverageOptions,
    IsoCOptions,
    IsoCTSOptions,
    MethodOptions,
    OptionError,
    TaskArithmeticOptions,
    TiesOptions,
    TsvMOptions,
)
from calm.registry import DEFAULT_METHOD, AnyOptions, BaselineName, MethodName, default_options
from calm.run_options import RunOptions

__all__ = [
    "DEFAULT_TEMPLATES", "AverageOptions", "CalmOptions", "FileRef", "IsoCOptions", "IsoCTSOptions",
    "MergeRequest", "MergeSpec", "MethodOptions", "ModelSpec", "RunOptions", "TaskArithmeticOptions",
    "OptionError", "TaskSpec", "TiesOptions", "TsvMOptions",
]  # fmt: skip

MetaKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetaValue = Annotated[str, StringConstraints(max_length=512)]
MAX_TASKS, MAX_METADATA = 64, 16


class MergeSpec(StrictModel, Generic[Ref]):
    """A whole merge: base, tasks, method + options, and what to evaluate."""

    model: ModelSpec[Ref]
    tasks: list[TaskSpec[Ref]] = Field(min_length=2, max_length=MAX_TASKS)
    method: MethodName = Field(default=DEFAULT_METHOD, description="A method of calm.registry.")
    options: AnyOptions = Field(
        default=None, validate_default=True,  # type: ignore[arg-type]  # None -> the defaults
        json_schema_extra=lambda schema: schema.pop("default", None),
        description="The method's options (every one has a default); the set depends on `method`.")
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    buffers: Literal["auto", "reestimate", "base", "average"] = Field(
        default="auto",
        description="Float buffers (BatchNorm statistics) of the merged model: re-estimated on "
        "every task's unlabeled data, the base's, or the tasks' average. 'auto' re-estimates "
        "when any task's buffers differ from the base, else keeps the base's.")
    evaluate: bool = True
    baselines: list[BaselineName] = Field(
        default_factory=list, max_length=16, description="Also merge and evaluate these for comparison."
    )
    metadata: dict[MetaKey, MetaValue] = Field(
        default_factory=dict, max_length=MAX_METADATA,
        description="Your labels: up to 16 keys (64 chars) -> values (512 chars); recorded, not used.")

    @model_validator(mode="before")
    @classmethod
    def _method_of_options(cls, data: Any) -> Any:
        """`MergeSpec(options=TiesOptions(...), ...)` implies method 'ties'."""
        if isinstance(data, dict) and "method" not in data and isinstance(data.get("options"), MethodOptions):
            return {**data, "method": data["options"].method}
        return data

    @field_validator("tasks")
    @classmethod
    def _unique_names(cls, tasks: list[TaskSpec[Any]]) -> list[TaskSpec[Any]]:
        names = [t.name for t in tasks]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"task names must be unique; repeated: {sorted(dup)}")
        return tasks

    @field_validator("options", mode="before")
    @classmethod
    def _tag_options(cls, value: Any, info: ValidationInfo) -> Any:
        """The union's tag is the spec's `method` (a bad method is reported on its own)."""
        method = info.data.get("method")
        if value is None:
            value = {}
        if isinstance(value, dict) and method is not None:
            given = value.get("method", method)
            if given != method:
                raise ValueError(f"options.method {given!r} disagrees with method {method!r}; "
                                 "leave it out (it is filled from method)")
            return {**value, "method": method}
        if isinstance(value, MethodOptions) and method is not None and value.method != method:
            raise ValueError(f"options are {type(value).__name__} (method {value.method!r}) but "
                             f"method is {method!r}")
        return value

    @field_validator("options")
    @classmethod
    def _options_fit_tasks(cls, opts: MethodOptions, info: ValidationInfo) -> MethodOptions:
        tasks = info.data.get("tasks")
        if tasks:
            opts.check_tasks([t.name for t in tasks])  # OptionError names the option
        return opts

    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def method_options(self) -> MethodOptions:
        """The parsed options of `method`."""
        return self.options

    def methods(self) -> list[str]:
        """The method, then each baseline not equal to it: the merges a run makes."""
        return [self.method, *[b for b in dict.fromkeys(self.baselines) if b != self.method]]

    def refs(self) -> Iterator[FileRef]:
        """Every file reference with its place and the service's file purpose."""
        yield FileRef("model.checkpoint", self.model.checkpoint, "checkpoint")
        for i, t in enumerate(self.tasks):
            for field, purpose in TaskSpec.REF_PURPOSES.items():
                ref = getattr(t, field)
                if ref is not None:
                    yield FileRef(f"tasks.{i}.{field}", ref, purpose)

    def with_refs(self, fn: Callable[[FileRef], Any], *, exclude_unset: bool = False) -> dict[str, Any]:
        """This spec (and its `run:` for a MergeRequest; no request-only fields) as a dict with
        every file reference replaced by `fn(FileRef)`: validate it as the other instance,
        e.g. `MergeRequest.model_validate(job.with_refs(local_path))`. `exclude_unset` keeps
        only what was given (defaults left to the reader)."""
        keep = set(MergeRequest.model_fields) & set(type(self).model_fields)
        data = self.model_dump(include=keep, exclude_unset=exclude_unset)
        data["model"]["checkpoint"] = fn(FileRef("model.checkpoint", self.model.checkpoint, "checkpoint"))
        for i, (task, raw) in enumerate(zip(self.tasks, data["tasks"], strict=True)):
            for field, purpose in TaskSpec.REF_PURPOSES.items():
                ref = getattr(task, field)
                if ref is not None:
                    raw[field] = fn(FileRef(f"tasks.{i}.{field}", ref, purpose))
        return data

    def spec_json(self) -> dict[str, Any]:
        """What to merge as plain JSON, every option explicit (spec.json; no run options)."""
        return self.model_dump(mode="json", include=set(MergeSpec.model_fields))

    def describe(self) -> list[str]:
        """The resolved plan in words: what will run, in order."""
        names = self.task_names()
        lines = [f"method {self.method} on {len(names)} tasks ({', '.join(names)}), seed {self.seed}"]
        lines += [f"  {line}" for line in self.options.describe(names)]
        for b in self.methods()[1:]:
            lines.append(f"baseline {b}: {default_options(b).describe(names)[0]}")
        with_eval = [t.name for t in self.tasks if t.eval is not None]
        if self.evaluate and with_eval:
            lines.append(f"evaluation on the labelled eval data of {len(with_eval)} task(s): "
                         f"{', '.join(with_eval)}")
        elif self.evaluate:
            lines.append("no labelled eval data: no accuracy table (pseudo-label agreement only)")
        return lines


class MergeRequest(MergeSpec[Ref], Generic[Ref]):
    """A spec file and a REST body: the spec plus how to run it (`run:`)."""

    run: RunOptions = Field(default_factory=RunOptions, description="How to run it (calm.run_options).")

    def run_options(self) -> RunOptions:
        return self.run

