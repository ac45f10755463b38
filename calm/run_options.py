"""How to run a merge (device, precision, batch sizes, data cap), apart from what to merge
(calm.spec.MergeSpec). No torch here.

`calm-merge` reads them from flags and the spec file's `run:` section; the worker takes
`device` and `max_images` from its settings (CALM_WORKER_DEVICE, CALM_MAX_IMAGES) and the rest
from the request's `run:`; the library takes them as `calm.merge(spec, run=RunOptions(...))`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_MAX_IMAGES = 20_000  # images per data set, also the service's upload check


class RunOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    device: str = Field(default="auto", max_length=32,
                        description="'auto', 'cpu', 'cuda' or 'cuda:N'. The service's workers use "
                        "their own (CALM_WORKER_DEVICE).")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="Forward-pass autocast dtype on CUDA (masks and weights stay "
        "fp32); 'auto' is bf16 on CUDA and fp32 elsewhere.")
    eval_batch_size: int = Field(default=256, ge=1, le=65_536)
    micro_batch_size: Annotated[int, Field(ge=1, le=65_536)] | Literal["auto"] = Field(
        default="auto", description="Images per forward/backward of the mask gradient (it is "
        "accumulated); 'auto' sizes it to the free GPU memory, 32 on the CPU.")
    max_images: int = Field(default=DEFAULT_MAX_IMAGES, ge=1, description="Images per data set; "
                            "more is an error (never a silent truncation). The service caps it "
                            "at its own limit (CALM_MAX_IMAGES).")

    def resolved_precision(self, device_type: str) -> str:
        if self.precision == "auto":
            return "bf16" if device_type == "cuda" else "fp32"
        return self.precision

    def micro_batch(self) -> int | None:
        """The fixed micro-batch, or None for 'auto'."""
        return None if self.micro_batch_size == "auto" else self.micro_batch_size


RUN_FIELDS: tuple[str, ...] = tuple(RunOptions.model_fields)
