"""What to merge (MergeSpec) and how (per-method options). Pure pydantic: no torch here.

A spec is plain data: it can come from YAML/JSON (CLI), from the service's database rows
(worker), or from Python. Every hyperparameter is explicit, with the reference defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """The shared pretrained base: an open_clip architecture and its weights."""

    arch: str = Field(description="open_clip architecture name (built-in or custom_config's).")
    custom_config: dict[str, Any] | None = Field(
        default=None,
        description="An open_clip model config (embed_dim, vision_cfg, text_cfg) registered as "
        "`arch` before the model is built.",
    )
    checkpoint: Path = Field(description="Pretrained weights: .safetensors, or .pt/.bin state dict.")


class TaskSpec(_Strict):
    """One fine-tuned model and the unlabeled inputs of its task."""

    name: str = Field(min_length=1, max_length=128)
    checkpoint: Path
    unlabeled: Path = Field(
        description="Unlabeled inputs: a directory, .zip or .tar of PNG/JPEG images, or a tensor "
        "file (.safetensors/.npz with key 'images', already preprocessed, [N, 3, H, W])."
    )
    classnames: list[str] | None = None
    templates: list[str] = Field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    head: Path | None = Field(
        default=None, description="A head tensor file: .safetensors with 'weight' [C, D]."
    )
    eval: Path | None = Field(
        default=None,
        description="Labelled eval data: .safetensors/.npz with 'images' [N,3,H,W] and "
        "'labels' [N], or a directory/archive of images in one sub-folder per class index.",
    )

    @model_validator(mode="after")
    def _head_or_classes(self) -> TaskSpec:
        if (self.classnames is None) == (self.head is None):
            raise ValueError(f"task {self.name!r}: give exactly one of classnames or head")
        if self.classnames is not None and len(self.classnames) < 2:
            raise ValueError(f"task {self.name!r}: need at least 2 class names")
        for t in self.templates:
            if "{}" not in t:
                raise ValueError(f"task {self.name!r}: template {t!r} has no '{{}}' placeholder")
        return self


Scale = float | Literal["auto"]


class AverageOptions(_Strict):
    pass


class TaskArithmeticOptions(_Strict):
    """Task arithmetic (Ilharco et al., ICLR 2023): θ0 + λ·Σ_t τ_t."""

    scaling: Scale = Field(
        default="auto",
        description="λ in θ0 + λ·Στ_t; 'auto' picks it from `scaling_grid` by agreement with the "
        "individual models' pseudo-labels on the unlabeled data (no test labels), or uses "
        "`default_scaling` when there are no pseudo-labels.",
    )
    scaling_grid: list[float] = Field(
        default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2.0],
        min_length=1,
    )
    default_scaling: float = Field(
        default=0.3, description="λ for 'auto' without pseudo-labels (FusionBench's default)."
    )


class TiesOptions(TaskArithmeticOptions):
    """TIES-merging (Yadav et al., NeurIPS 2023): trim, elect signs, disjoint merge."""

    density: float = Field(
        default=0.2, gt=0, le=1,
        description="Share of each task vector's largest |τ| entries kept (FusionBench's "
        "threshold 20, i.e. top-20%).",
    )
    merge_func: Literal["mean", "sum", "max"] = Field(
        default="mean",
        description="Disjoint aggregation of the agreeing entries: 'mean' (the paper), 'sum' "
        "(FusionBench's config default) or 'max'.",
    )
    default_scaling: float = Field(
        default=1.0,
        description="λ for 'auto' without pseudo-labels. The disjoint mean has the size of one "
        "task vector, so 1.0 (FusionBench's 0.3 goes with merge_func 'sum').",
    )


class CalmOptions(_Strict):
    """CALM hyperparameters (DESIGN.md §3); defaults follow the reference code."""

    # 1. pseudo-labels
    ratio: float = Field(default=0.9, gt=0, le=1, description="Fraction kept per predicted class.")
    class_balanced: bool = True
    # 2. efficient-aware framework
    base_lambda: Scale = Field(default=0.3, description="λ of the base group's task arithmetic.")
    lambda_grid: list[float] = Field(
        default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0]
    )
    num_sequential: int = Field(default=2, ge=1, description="K: tasks merged with masks.")
    sequential_tasks: list[str] | None = Field(
        default=None, description="Names of the sequential tasks, in order; default automatic."
    )
    # 3. mask optimisation
    sparsity: float = Field(default=1e-5, gt=0, lt=1, description="Top-k share of the mask init.")
    init_logit: float = Field(default=5.0, gt=0, description="b: m = ±b at init.")
    lr: Scale = Field(
        default="auto",
        description="Mask learning rate. A number is the reference's raw lr (1e7 for ViT-B/32); "
        "'auto' is scale-free: the step is normalised by the mask gradient's scale and the "
        "relative rate is chosen from `lr_grid` by pseudo-label accuracy.",
    )
    lr_grid: list[float] = Field(default_factory=lambda: [0.3, 1.0, 3.0], min_length=1)
    lr_search: Literal["first", "every"] = Field(
        default="first",
        description="With lr='auto': choose the relative rate from lr_grid at the first "
        "sequential step only (cheap: two tasks seen) and reuse it, or at every step.",
    )
    regularizer: Literal["binarize", "l1"] = "binarize"
    alpha: float = Field(default=1.0, ge=0)
    epochs: int = Field(default=100, ge=1)
    batch_size: int = Field(default=128, ge=1)
    batches_per_task: int = Field(default=2, ge=1)


def _spectral_grid() -> list[float]:
    return [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0]


class TsvMOptions(_Strict):
    """Task Singular Vectors merging, TSV-M (Gargiulo et al., CVPR 2025, arXiv 2412.00081)."""

    scaling: Scale = Field(
        default="auto",
        description="α in θ0 + α·τ_TSV; 'auto' picks it from `scaling_grid` by pseudo-label "
        "agreement, or uses `default_scaling` when there are no pseudo-labels.",
    )
    scaling_grid: list[float] = Field(default_factory=_spectral_grid, min_length=1)
    default_scaling: float = Field(default=1.0, description="The paper's α (FusionBench: alpha 1).")
    rank_share: float | None = Field(
        default=None, gt=0, le=1,
        description="Share of each layer's rank kept per task (k = ⌊r·share⌋ singular triplets); "
        "null is 1/T, the paper's choice, so the T blocks fill the rank. At most 1/T.",
    )
    exclude_keys: list[str] = Field(
        default_factory=list,
        description="2-D tensors (by name) to average instead of merging by singular vectors.",
    )


class IsoCOptions(_Strict):
    """Isotropic merging in the common subspace, Iso-C (Marczak et al., ICML 2025,
    arXiv 2502.04959)."""

    scaling: Scale = Field(
        default="auto",
        description="α in θ0 + α·τ_iso; 'auto' picks it from `scaling_grid` by pseudo-label "
        "agreement, or uses `default_scaling` when there are no pseudo-labels.",
    )
    scaling_grid: list[float] = Field(default_factory=_spectral_grid, min_length=1)
    default_scaling: float = Field(
        default=1.0,
        description="α without pseudo-labels: FusionBench's config default (the paper selects α "
        "on validation data; FusionBench's ViT examples use 1.5).",
    )
    exclude_keys: list[str] = Field(
        default_factory=list,
        description="2-D tensors (by name) to average instead of merging by singular vectors.",
    )


class IsoCTSOptions(IsoCOptions):
    """Isotropic merging in common and task-specific subspaces, Iso-CTS (same paper)."""

    common_space_fraction: float = Field(
        default=0.8, gt=0, le=1,
        description="Share of each layer's rank given to the common subspace (the paper's 0.8); "
        "the rest is split equally among the tasks.",
    )


METHOD_OPTIONS: dict[str, type[_Strict]] = {
    "calm": CalmOptions,
    "task_arithmetic": TaskArithmeticOptions,
    "ties": TiesOptions,
    "average": AverageOptions,
    "tsv_m": TsvMOptions,
    "iso_c": IsoCOptions,
    "iso_cts": IsoCTSOptions,
}


class MergeSpec(_Strict):
    """A whole merge: base, tasks, method + options, and what to evaluate."""

    model: ModelSpec
    tasks: list[TaskSpec] = Field(min_length=2)
    method: Literal["calm", "task_arithmetic", "ties", "average", "tsv_m", "iso_c", "iso_cts"] = "calm"
    options: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    precision: Literal["fp32", "bf16"] = Field(
        default="fp32", description="Forward-pass autocast dtype on CUDA (masks stay fp32)."
    )
    evaluate: bool = True
    baselines: list[Literal["task_arithmetic", "ties", "average", "tsv_m", "iso_c", "iso_cts"]] = Field(
        default_factory=list, description="Also merge and evaluate these for comparison."
    )
    eval_batch_size: int = Field(default=256, ge=1)

    @field_validator("tasks")
    @classmethod
    def _unique_names(cls, tasks: list[TaskSpec]) -> list[TaskSpec]:
        names = [t.name for t in tasks]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"task names must be unique; repeated: {sorted(dup)}")
        return tasks

    @model_validator(mode="after")
    def _check_options(self) -> MergeSpec:
        opts = self.method_options()
        if isinstance(opts, CalmOptions) and opts.sequential_tasks is not None:
            unknown = set(opts.sequential_tasks) - {t.name for t in self.tasks}
            if unknown:
                raise ValueError(f"sequential_tasks names unknown tasks: {sorted(unknown)}")
        return self

    def method_options(self) -> BaseModel:
        """The parsed options of `method` (raises ValueError on unknown keys)."""
        return METHOD_OPTIONS[self.method].model_validate(self.options)
