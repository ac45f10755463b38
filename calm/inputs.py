"""The inputs of a merge — the base model and each task — generic over their file references
(a local path, or the service's file id). Pure pydantic: no torch here. Part of calm.spec."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from typing_extensions import TypeVar

# With no templates, zero-shot heads use CLIP's 7-template ImageNet ensemble (the one the CLIP
# authors selected; open_clip ships it as SIMPLE_IMAGENET_TEMPLATES).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
)
# Task names: 1-128 characters, no '/', '\\', ':' or control characters, no space at either
# end ("parity (inverted)" is fine). They key masks ("<task>::<tensor>") and database rows.
TASK_NAME = r"^[^\s/\\:\x00-\x1f\x7f]([^/\\:\x00-\x1f\x7f]{0,126}[^\s/\\:\x00-\x1f\x7f])?$"
TASK_NAME_RULE = "1-128 characters, no '/', '\\', ':' or control characters, no space at either end"
TaskName = Annotated[str, StringConstraints(pattern=TASK_NAME)]
ClassName = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Template = Annotated[str, StringConstraints(min_length=2, max_length=1000)]
MAX_CLASSNAMES, MAX_TEMPLATES = 10_000, 64

Ref = TypeVar("Ref", default=Path)


class FileRef(NamedTuple):
    loc: str  # e.g. "tasks.0.unlabeled"
    ref: Any  # a path or a file id
    purpose: str  # the service's file purpose: checkpoint, dataset, head, eval


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @classmethod
    def model_parametrized_name(cls, params: tuple[type[Any], ...]) -> str:
        """`TaskSpec[FileId]` rather than pydantic's spelled-out annotation (OpenAPI names)."""
        names = [getattr(p, "__name__", None) or getattr(p, "ref_name", None) or "Ref" for p in params]
        meta = [m for p in params for m in getattr(p, "__metadata__", ())]
        names = [next((str(m) for m in meta if isinstance(m, str)), n) for n in names]
        return f"{cls.__name__}[{', '.join(names)}]"


class ModelSpec(StrictModel, Generic[Ref]):
    """The shared pretrained base: an open_clip architecture and its weights."""

    arch: str = Field(min_length=1, max_length=256,
                      description="open_clip architecture name (built-in or custom_config's).")
    custom_config: dict[str, Any] | None = Field(
        default=None,
        description="An open_clip model config (embed_dim, vision_cfg, text_cfg) registered as "
        "`arch` before the model is built. In a spec file, also a path to a JSON file.",
    )
    checkpoint: Ref = Field(description="Pretrained weights: .safetensors, or .pt/.bin state dict "
                            "(in a spec file, also an open_clip pretrained tag whose weights are cached).")


class TaskSpec(StrictModel, Generic[Ref]):
    """One fine-tuned model and the unlabeled inputs of its task."""

    REF_PURPOSES: ClassVar[dict[str, str]] = {
        "checkpoint": "checkpoint", "unlabeled": "dataset", "head": "head", "eval": "eval",
        "eval_labels": "eval",
    }

    name: TaskName = Field(description=f"The task's name: {TASK_NAME_RULE}.")
    checkpoint: Ref = Field(description="Fine-tuned weights (same tensors as the base).")
    unlabeled: Ref = Field(
        description="Unlabeled inputs: a directory, .zip or .tar of images, or a tensor file "
        "(.safetensors/.npz with key 'images', already preprocessed, [N, 3, H, W])."
    )
    classnames: list[ClassName] | None = Field(default=None, min_length=2, max_length=MAX_CLASSNAMES)
    templates: list[Template] | None = Field(
        default=None, min_length=1, max_length=MAX_TEMPLATES,
        description="Prompt templates with one '{}' for the class name; default: CLIP's "
        "7-template ImageNet ensemble (calm.spec.DEFAULT_TEMPLATES).")
    head: Ref | None = Field(
        default=None, description="A head tensor file: .safetensors with 'weight' [C, D] and "
        "optionally 'logit_scale' (log-scale, as CLIP). Rows of unit norm without a "
        "logit_scale are scaled by the base model's exp(logit_scale).",
    )
    eval: Ref | None = Field(
        default=None,
        description="Labelled eval data: .safetensors/.npz with 'images' [N,3,H,W] and "
        "'labels' [N]; a directory/archive of images in one sub-folder per class, named by a "
        "class name (`even/`) or index (`0/`); or a flat one labelled by `eval_labels`.",
    )
    eval_labels: Ref | None = Field(
        default=None, description="A CSV `filename,label` labelling the images of `eval` (a flat "
        "folder or archive); label: a class index or a class name.")

    @field_validator("templates")
    @classmethod
    def _one_placeholder(cls, templates: list[str] | None) -> list[str] | None:
        for t in templates or ():
            try:
                ok = "{}" in t and t.format("x") is not None
            except (IndexError, KeyError, ValueError, AttributeError):
                ok = False
            if not ok:
                raise ValueError(f"template {t[:80]!r} must hold exactly one '{{}}' and no other "
                                 "braces (write '{{' and '}}' for literal ones)")
        return templates

    @model_validator(mode="after")
    def _head_or_classes(self) -> TaskSpec[Ref]:
        if self.classnames is None and self.head is None:
            raise ValueError(f"task {self.name!r}: give classnames (a zero-shot head is built "
                             "from them) or a head file")
        if self.eval_labels is not None and self.eval is None:
            raise ValueError(f"task {self.name!r}: eval_labels labels the images of `eval`; give eval")
        return self

    def resolved_templates(self) -> list[str]:
        return list(self.templates) if self.templates else list(DEFAULT_TEMPLATES)
