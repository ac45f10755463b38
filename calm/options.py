"""Every merge method's options, one class per method. Pure pydantic: no torch here.

A method declares itself in its options class (as mergekit's method objects do): its name (the
`method` tag of the spec's options union), the function that runs it (imported lazily by
calm.methods), whether it may be a baseline, and how it describes its plan. calm.registry
lists the classes once; nothing else lists method names. CALM's options are in
calm.calm_options.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Scale = Annotated[float, Field(allow_inf_nan=False)] | Literal["auto"]
Grid = Annotated[list[PositiveFloat], Field(min_length=1, max_length=64)]
ExcludeKeys = Annotated[list[Annotated[str, Field(max_length=512)]], Field(max_length=10_000)]


class OptionError(ValueError):
    """An option that does not fit the spec (e.g. CALM's K for T tasks); `field` names it,
    `message` says why (str() has both)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"options.{field}: {message}")
        self.field, self.message = field, message


class MethodOptions(BaseModel):
    """Base of the options classes. `method` is the tag of the spec's options union: it is
    filled from the spec's `method` and left out of dumps (spec.json, stored requests)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    method: str
    function: ClassVar[str]  # "module:function" of the method, imported by calm.methods
    title: ClassVar[str]  # one line for listings and plans
    baseline: ClassVar[bool] = True  # may be listed in a spec's `baselines`

    @classmethod
    def name(cls) -> str:
        return str(cls.model_fields["method"].default)

    @classmethod
    def option_names(cls) -> list[str]:
        return [f for f in cls.model_fields if f != "method"]

    def check_tasks(self, names: list[str]) -> None:
        """Raises OptionError when the options cannot work for these tasks."""

    def describe(self, names: list[str]) -> list[str]:
        """What this method will do for these tasks, in a line or a few."""
        return [self.title]


def method_tag(name: str) -> Any:
    """The `method` field of an options class: the method's name, the options union's tag."""
    return Field(default=name, exclude=True, repr=False,
                 description="Filled from the spec's `method`; leave it out.")


class AverageOptions(MethodOptions):
    method: Literal["average"] = method_tag("average")
    function: ClassVar[str] = "calm.methods.baselines:average"
    title: ClassVar[str] = "average: θ0 + the mean of the task vectors"


def _spectral_grid() -> list[float]:
    return [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0]


class ScaledOptions(MethodOptions):
    """A method that adds its merged task vector to θ0 with one global factor: λ (task
    arithmetic, TIES) or α (the spectral methods)."""

    symbol: ClassVar[str] = "α"

    scaling: Scale = Field(
        default="auto",
        description="The global factor on the merged task vector (λ for task arithmetic and "
        "TIES, α for the spectral methods); 'auto' picks it from `scaling_grid` by agreement "
        "with the individual models' pseudo-labels on held-out unlabeled data (no test "
        "labels), or uses `default_scaling` when there are no pseudo-labels.",
    )
    scaling_grid: Grid = Field(default_factory=_spectral_grid)
    default_scaling: float = Field(
        default=1.0, description="The factor for 'auto' without pseudo-labels (the paper's α; "
        "FusionBench: alpha 1).")

    def scale_text(self) -> str:
        """How the global factor is chosen, for plans."""
        if self.scaling != "auto":
            return f"{self.symbol} = {self.scaling:g}"
        return (f"{self.symbol} chosen from {len(self.scaling_grid)} values on held-out "
                f"pseudo-labels ({self.default_scaling:g} without unlabeled data)")


class TaskArithmeticOptions(ScaledOptions):
    """Task arithmetic (Ilharco et al., ICLR 2023): θ0 + λ·Σ_t τ_t."""

    method: Literal["task_arithmetic"] = method_tag("task_arithmetic")
    function: ClassVar[str] = "calm.methods.baselines:task_arithmetic"
    title: ClassVar[str] = "task arithmetic: θ0 + λ·Σ_t τ_t"
    symbol: ClassVar[str] = "λ"

    scaling_grid: Grid = Field(
        default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2.0]
    )
    default_scaling: float = Field(
        default=0.3, description="λ for 'auto' without pseudo-labels (FusionBench's default)."
    )

    def describe(self, names: list[str]) -> list[str]:
        return [f"{self.title}, {self.scale_text()}"]


class TiesOptions(TaskArithmeticOptions):
    """TIES-merging (Yadav et al., NeurIPS 2023): trim, elect signs, disjoint merge."""

    method: Literal["ties"] = method_tag("ties")  # type: ignore[assignment]
    function: ClassVar[str] = "calm.methods.baselines:ties"
    title: ClassVar[str] = "TIES: trim each τ_t, elect signs, disjoint merge"

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

    def describe(self, names: list[str]) -> list[str]:
        return [f"TIES: keep the top {self.density:.0%} of each τ_t, elect signs, disjoint "
                f"{self.merge_func}; {self.scale_text()}"]


def rank_share_problem(share: float | None, num_tasks: int) -> str | None:
    """TSV-M's T blocks of ⌊r·share⌋ triplets must fit a layer's rank r."""
    if share is not None and share * num_tasks > 1:
        return (f"{share:g} × {num_tasks} tasks exceeds a layer's rank; use at most "
                f"1/T = {1 / num_tasks:.4g}, or null for 1/T")
    return None


class SpectralOptions(ScaledOptions):
    """A per-layer spectral merge (TSV-M, Iso-C, Iso-CTS): 2-D tensors by singular vectors."""

    exclude_keys: ExcludeKeys = Field(
        default_factory=list,
        description="2-D tensors (by name) to average instead of merging by singular vectors.",
    )


class TsvMOptions(SpectralOptions):
    """Task Singular Vectors merging, TSV-M (Gargiulo et al., CVPR 2025, arXiv 2412.00081)."""

    method: Literal["tsv_m"] = method_tag("tsv_m")
    function: ClassVar[str] = "calm.methods.tsv_m:tsv_m"
    title: ClassVar[str] = "TSV-M: per layer, the tasks' top singular vectors, whitened"

    rank_share: float | None = Field(
        default=None, gt=0, le=1,
        description="Share of each layer's rank kept per task (k = ⌊r·share⌋ singular triplets); "
        "null is 1/T, the paper's choice, so the T blocks fill the rank. At most 1/T.",
    )

    def check_tasks(self, names: list[str]) -> None:
        problem = rank_share_problem(self.rank_share, len(names))
        if problem:
            raise OptionError("rank_share", problem)

    def describe(self, names: list[str]) -> list[str]:
        share = f"{self.rank_share:g}" if self.rank_share is not None else f"1/T = 1/{len(names)}"
        return [f"TSV-M: per layer each task keeps a rank share of {share}, whitened; "
                f"{self.scale_text()}"]


class IsoCOptions(SpectralOptions):
    """Isotropic merging in the common subspace, Iso-C (Marczak et al., ICML 2025,
    arXiv 2502.04959). `default_scaling` 1.0 is FusionBench's config default (the paper selects
    α on validation data; FusionBench's ViT examples use 1.5)."""

    method: Literal["iso_c"] = method_tag("iso_c")
    function: ClassVar[str] = "calm.methods.iso:iso_c"
    title: ClassVar[str] = "Iso-C: per layer, Σ_t τ_t with a flattened spectrum"

    def describe(self, names: list[str]) -> list[str]:
        return [f"{self.title}; {self.scale_text()}"]


class IsoCTSOptions(IsoCOptions):
    """Isotropic merging in common and task-specific subspaces, Iso-CTS (same paper)."""

    method: Literal["iso_cts"] = method_tag("iso_cts")  # type: ignore[assignment]
    function: ClassVar[str] = "calm.methods.iso:iso_cts"
    title: ClassVar[str] = "Iso-CTS: per layer, a common subspace plus one per task, isotropic"

    common_space_fraction: float = Field(
        default=0.8, gt=0, le=1,
        description="Share of each layer's rank given to the common subspace (the paper's 0.8); "
        "the rest is split equally among the tasks.",
    )

    def describe(self, names: list[str]) -> list[str]:
        return [f"Iso-CTS: per layer {self.common_space_fraction:.0%} of the rank common, the rest "
                f"split among the {len(names)} tasks, isotropic; {self.scale_text()}"]
