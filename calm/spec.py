"""What to merge (MergeSpec) and how (per-method options). Pure pydantic: no torch here.

A spec is plain data: it can come from YAML/JSON (CLI), from the service's database rows
(worker), or from Python. Every hyperparameter is explicit, with the reference defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# With no templates, zero-shot heads use CLIP's 7-template ImageNet ensemble (the one the CLIP
# authors selected; open_clip ships it as SIMPLE_IMAGENET_TEMPLATES).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


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
    templates: list[str] | None = Field(
        default=None, description="Prompt templates with '{}' for the class name; default: "
        "CLIP's 7-template ImageNet ensemble (calm.spec.DEFAULT_TEMPLATES).")
    head: Path | None = Field(
        default=None, description="A head tensor file: .safetensors with 'weight' [C, D] and "
        "optionally 'logit_scale' (log-scale, as CLIP). Rows of unit norm without a "
        "logit_scale are scaled by the base model's exp(logit_scale).",
    )
    eval: Path | None = Field(
        default=None,
        description="Labelled eval data: .safetensors/.npz with 'images' [N,3,H,W] and "
        "'labels' [N], or a directory/archive of images in one sub-folder per class index.",
    )

    @model_validator(mode="after")
    def _head_or_classes(self) -> TaskSpec:
        if self.classnames is None and self.head is None:
            raise ValueError(f"task {self.name!r}: give classnames (a zero-shot head is built "
                             "from them) or a head file")
        if self.classnames is not None and len(self.classnames) < 2:
            raise ValueError(f"task {self.name!r}: need at least 2 class names")
        for t in self.templates or ():
            if "{}" not in t:
                raise ValueError(f"task {self.name!r}: template {t!r} has no '{{}}' placeholder")
        return self

    def resolved_templates(self) -> list[str]:
        return list(self.templates) if self.templates else list(DEFAULT_TEMPLATES)


PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Scale = Annotated[float, Field(allow_inf_nan=False)] | Literal["auto"]
Grid = Annotated[list[PositiveFloat], Field(min_length=1, max_length=64)]


class AverageOptions(_Strict):
    pass


class TaskArithmeticOptions(_Strict):
    """Task arithmetic (Ilharco et al., ICLR 2023): θ0 + λ·Σ_t τ_t."""

    scaling: Scale = Field(
        default="auto",
        description="λ in θ0 + λ·Στ_t; 'auto' picks it from `scaling_grid` by agreement with the "
        "individual models' pseudo-labels on held-out unlabeled data (no test labels), or "
        "uses `default_scaling` when there are no pseudo-labels.",
    )
    scaling_grid: Grid = Field(
        default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2.0]
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
    """CALM hyperparameters (DESIGN.md §3); defaults follow the reference code where it
    transfers, and are chosen on held-out pseudo-labels where it does not (docs/design-notes)."""

    # 1. pseudo-labels
    ratio: float = Field(default=0.9, gt=0, le=1, description="Fraction kept per predicted class.")
    class_balanced: bool = True
    holdout: float = Field(
        default=0.2, ge=0, le=0.5,
        description="Seeded share of each task's selected pseudo-labelled samples that masks "
        "never train on; λ, lr and plan are scored there.")
    # 2. efficient-aware framework
    base_lambda: Scale = Field(
        default="auto", description="λ of the base group's task arithmetic; 'auto' picks it "
        "from `lambda_grid` on the held-out pseudo-labels.")
    lambda_grid: Grid = Field(
        default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0]
    )
    num_sequential: int | Literal["auto"] = Field(
        default="auto",
        description="K: tasks merged with masks, 1 ≤ K ≤ T−1 (a base group of ≤ 2 tasks runs "
        "fully sequential, as the reference). 'auto' runs the efficient plan (K=2) and the "
        "fully sequential one (K=T−1) and keeps the better on held-out pseudo-labels.")
    sequential_tasks: list[str] | None = Field(
        default=None, description="Names of the sequential tasks, in order; default automatic."
    )
    # 3. mask optimisation
    sparsity: float = Field(default=1e-5, gt=0, lt=1, description="Top-k share of the mask init.")
    init_logit: float = Field(default=5.0, gt=0, allow_inf_nan=False, description="b: m = ±b at init.")
    lr: PositiveFloat | Literal["auto"] = Field(
        default="auto",
        description="Mask learning rate. A number is the reference's raw lr (1e7 for ViT-B/32); "
        "'auto' is scale-free: the step is normalised by the mask gradient's scale and the "
        "relative rate is chosen from `lr_grid` on held-out pseudo-labels.",
    )
    lr_grid: Grid = Field(default_factory=lambda: [0.3, 1.0, 3.0])
    lr_grid_extend: int = Field(
        default=2, ge=0, le=4,
        description="When the best relative lr is at an edge of lr_grid, try up to this many "
        "further values beyond it (same ratio as the grid's end).")
    lr_screen: float = Field(
        default=0.1, gt=0, le=1,
        description="Share of the epochs each lr candidate runs before the best one continues.")
    lr_search: Literal["first", "every"] = Field(
        default="first",
        description="With lr='auto': choose the relative rate at the first sequential step only "
        "and reuse it, or at every step.",
    )
    grad_scale_top_fraction: float = Field(
        default=1e-3, gt=0, le=1,
        description="s = mean |∂L/∂m| over this top share of entries, at the first epoch with a "
        "non-zero gradient; the relative lr is measured in units of s.")
    regularizer: Literal["binarize", "l1"] = "binarize"
    alpha: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    epochs: int = Field(default=100, ge=1, le=100_000)
    batch_size: int = Field(default=128, ge=1, le=65_536)
    batches_per_task: int = Field(default=2, ge=1, le=1_000)


def _spectral_grid() -> list[float]:
    return [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0]


class TsvMOptions(_Strict):
    """Task Singular Vectors merging, TSV-M (Gargiulo et al., CVPR 2025, arXiv 2412.00081)."""

    scaling: Scale = Field(
        default="auto",
        description="α in θ0 + α·τ_TSV; 'auto' picks it from `scaling_grid` by pseudo-label "
        "agreement, or uses `default_scaling` when there are no pseudo-labels.",
    )
    scaling_grid: Grid = Field(default_factory=_spectral_grid)
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
    scaling_grid: Grid = Field(default_factory=_spectral_grid)
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
    buffers: Literal["auto", "reestimate", "base", "average"] = Field(
        default="auto",
        description="Float buffers (BatchNorm statistics) of the merged model: re-estimated on "
        "every task's unlabeled data, the base's, or the tasks' average. 'auto' re-estimates "
        "when any task's buffers differ from the base, else keeps the base's.")
    evaluate: bool = True
    baselines: list[Literal["task_arithmetic", "ties", "average", "tsv_m", "iso_c", "iso_cts"]] = Field(
        default_factory=list, description="Also merge and evaluate these for comparison."
    )
    # run-time settings: how to run, not what to merge
    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="Forward-pass autocast dtype on CUDA (masks and weights stay "
        "fp32); 'auto' is bf16 on CUDA and fp32 elsewhere.")
    eval_batch_size: int = Field(default=256, ge=1, le=65_536)
    micro_batch_size: int | Literal["auto"] = Field(
        default="auto", description="Images per forward/backward of the mask gradient (it is "
        "accumulated); 'auto' sizes it to the free GPU memory, 32 on the CPU.")
    max_images: int = Field(default=20_000, ge=1, description="Images per data set; more is an "
                            "error (never a silent truncation).")

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
        if isinstance(opts, CalmOptions):
            check_plan(opts, [t.name for t in self.tasks])
        return self

    def resolved_precision(self, device_type: str) -> str:
        if self.precision == "auto":
            return "bf16" if device_type == "cuda" else "fp32"
        return self.precision

    def method_options(self) -> BaseModel:
        """The parsed options of `method` (raises ValueError on unknown keys)."""
        return METHOD_OPTIONS[self.method].model_validate(self.options)


def check_plan(opts: CalmOptions, names: list[str]) -> None:
    """K and the named sequential tasks must fit the T tasks (ValueError otherwise)."""
    t = len(names)
    if opts.sequential_tasks is not None:
        seq = opts.sequential_tasks
        unknown = sorted(set(seq) - set(names))
        if unknown:
            raise ValueError(f"sequential_tasks names unknown tasks: {unknown}")
        if len(set(seq)) != len(seq):
            raise ValueError("sequential_tasks lists a task twice")
        if not 1 <= len(seq) <= t - 1:
            raise ValueError(f"sequential_tasks must name 1 to {t - 1} of the {t} tasks "
                             f"(one task at least stays in the base group)")
        if opts.num_sequential not in ("auto", len(seq)):
            raise ValueError(f"num_sequential={opts.num_sequential} disagrees with the "
                             f"{len(seq)} sequential_tasks named")
    elif opts.num_sequential != "auto" and not 1 <= opts.num_sequential <= t - 1:
        raise ValueError(f"num_sequential must be between 1 and T−1 = {t - 1} for {t} tasks "
                         f"(got {opts.num_sequential}), or 'auto'")
