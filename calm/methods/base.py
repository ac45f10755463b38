"""The method interface: a merge method maps a context + options to a merged task vector."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from calm.context import MergeContext
from calm.task_vectors import Params


@dataclass
class MethodOutput:
    tau: Params  # merged task vector: the merged model is θ0 + tau
    masks: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # task -> name -> bool
    info: dict[str, Any] = field(default_factory=dict)  # chosen settings (JSON-able)


MergeMethod = Callable[[MergeContext, Any], MethodOutput]
