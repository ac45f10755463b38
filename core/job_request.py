"""The body of `POST /v1/merges` (stored verbatim, normalised, as merge_jobs.request).

It mirrors calm.spec.MergeSpec with file ids where the library takes paths; `to_spec_dict`
turns it into a MergeSpec dict given a file-id -> path function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

FileId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]
Template = Annotated[str, StringConstraints(min_length=2, max_length=1000)]
MetaKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetaValue = Annotated[str, StringConstraints(max_length=512)]
MAX_CLASSNAMES = 10_000
MAX_TEMPLATES = 64
TaskName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BaseModelRef(_Strict):
    arch: str = Field(min_length=1, max_length=128, description="open_clip architecture name.")
    custom_config: dict[str, Any] | None = Field(
        default=None, description="open_clip model config (embed_dim, vision_cfg, text_cfg)."
    )
    checkpoint: FileId = Field(description="File id (purpose checkpoint) of the pretrained base.")


class TaskRef(_Strict):
    name: TaskName
    checkpoint: FileId = Field(description="File id (purpose checkpoint), fine-tuned weights.")
    unlabeled: FileId = Field(description="File id (purpose dataset), unlabeled inputs.")
    classnames: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]] | None = Field(
        default=None, max_length=MAX_CLASSNAMES
    )
    templates: list[Template] | None = Field(default=None, min_length=1, max_length=MAX_TEMPLATES)
    head: FileId | None = Field(default=None, description="File id (purpose head).")
    eval: FileId | None = Field(default=None, description="File id (purpose eval), labelled.")


class JobCreate(_Strict):
    model: BaseModelRef
    tasks: list[TaskRef] = Field(min_length=2, max_length=64)
    method: Literal["calm", "task_arithmetic", "ties", "average", "tsv_m", "iso_c", "iso_cts"] = "calm"
    options: dict[str, Any] = Field(
        default_factory=dict, max_length=64, description="Method hyperparameters."
    )
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    baselines: list[Literal["task_arithmetic", "ties", "average", "tsv_m", "iso_c", "iso_cts"]] = Field(
        default_factory=list, max_length=6
    )
    evaluate: bool = True
    buffers: Literal["auto", "reestimate", "base", "average"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    eval_batch_size: int = Field(default=256, ge=1, le=65536)
    micro_batch_size: int | Literal["auto"] = Field(default="auto")
    metadata: dict[MetaKey, MetaValue] = Field(
        default_factory=dict, max_length=16, description="Up to 16 keys (64 chars) -> values (512 chars)."
    )

    def file_refs(self) -> Iterator[tuple[str, str, str]]:
        """(role, file id, required purpose) for every referenced file."""
        yield "model.checkpoint", self.model.checkpoint, "checkpoint"
        for i, t in enumerate(self.tasks):
            yield f"tasks.{i}.checkpoint", t.checkpoint, "checkpoint"
            yield f"tasks.{i}.unlabeled", t.unlabeled, "dataset"
            if t.head is not None:
                yield f"tasks.{i}.head", t.head, "head"
            if t.eval is not None:
                yield f"tasks.{i}.eval", t.eval, "eval"

    def to_spec_dict(self, path: Callable[[str], str], device: str = "auto") -> dict[str, Any]:
        """A dict that validates as calm.spec.MergeSpec, file ids mapped through `path`."""
        tasks = []
        for t in self.tasks:
            task: dict[str, Any] = {
                "name": t.name,
                "checkpoint": path(t.checkpoint),
                "unlabeled": path(t.unlabeled),
                "classnames": t.classnames,
                "head": path(t.head) if t.head else None,
                "eval": path(t.eval) if t.eval else None,
            }
            if t.templates is not None:
                task["templates"] = t.templates
            tasks.append(task)
        return {
            "model": {
                "arch": self.model.arch,
                "custom_config": self.model.custom_config,
                "checkpoint": path(self.model.checkpoint),
            },
            "tasks": tasks,
            "method": self.method,
            "options": self.options,
            "seed": self.seed,
            "device": device,
            "precision": self.precision,
            "evaluate": self.evaluate,
            "buffers": self.buffers,
            "baselines": self.baselines,
            "eval_batch_size": self.eval_batch_size,
            "micro_batch_size": self.micro_batch_size,
        }
