"""CALM's options (DESIGN.md §3): pseudo-labels, the efficient-aware plan, mask optimisation.
No torch here; the plan rules are in calm.plan."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from calm.options import Grid, MethodOptions, PositiveFloat, Scale, method_tag
from calm.plan import check_plan, describe


class CalmOptions(MethodOptions):
    """CALM hyperparameters (DESIGN.md §3); defaults follow the reference code where it
    transfers, and are chosen on held-out pseudo-labels where it does not (docs/design-notes)."""

    method: Literal["calm"] = method_tag("calm")
    function: ClassVar[str] = "calm.methods.calm_method:calm"
    title: ClassVar[str] = "CALM: base group by task arithmetic, then consensus-aware masks"
    baseline: ClassVar[bool] = False

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
    buffer_refresh_every: int = Field(
        default=10, ge=0, le=100_000,
        description="BatchNorm towers: re-estimate the statistics the mask training runs with "
        "every this many epochs, for the current soft merge (0: once per step, from the "
        "step's starting merge). No effect on towers without buffers.")
    regularizer: Literal["binarize", "l1"] = "binarize"
    alpha: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    epochs: int = Field(default=100, ge=1, le=100_000)
    batch_size: int = Field(default=128, ge=1, le=65_536)
    batches_per_task: int = Field(default=2, ge=1, le=1_000)

    def check_tasks(self, names: list[str]) -> None:
        check_plan(self, names)

    def describe(self, names: list[str]) -> list[str]:
        return describe(self, names)
