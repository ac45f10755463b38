"""What a merge returns, and how it is written to disk (atomically, as safetensors + JSON)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

MERGED_FILE = "merged.safetensors"
MASKS_FILE = "masks.safetensors"
REPORT_FILE = "report.json"
MASK_KEY_SEP = "::"  # masks.safetensors keys are "<task>::<param name>"


@dataclass
class MergeResult:
    state_dict: dict[str, torch.Tensor]  # the full open_clip state dict, merged, on CPU
    masks: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # task -> name -> bool
    report: dict[str, Any] = field(default_factory=dict)  # JSON-able evaluation + settings

    def mask_density(self) -> dict[str, dict[str, float]]:
        """task -> param name -> fraction of entries taken from that task's vector."""
        return {
            task: {name: float(m.float().mean()) for name, m in per.items()}
            for task, per in self.masks.items()
        }


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call `write(tmp_path)` then rename onto `path`, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_state_dict(state: dict[str, torch.Tensor], path: Path, meta: dict[str, str] | None = None) -> None:
    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    atomic_write_bytes(path, lambda p: save_file(contiguous, str(p), metadata=meta))


def flatten_masks(masks: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {
        f"{task}{MASK_KEY_SEP}{name}": m.to(torch.uint8)
        for task, per in masks.items()
        for name, m in per.items()
    }


def save_result(result: MergeResult, out_dir: Path) -> dict[str, Path]:
    """Write merged.safetensors, masks.safetensors and report.json under `out_dir`."""
    out_dir = Path(out_dir)
    paths = {
        "merged": out_dir / MERGED_FILE,
        "masks": out_dir / MASKS_FILE,
        "report": out_dir / REPORT_FILE,
    }
    save_state_dict(result.state_dict, paths["merged"], {"format": "pt"})
    save_state_dict(flatten_masks(result.masks), paths["masks"], {"format": "pt"})
    text = json.dumps(result.report, indent=2, sort_keys=True)
    atomic_write_bytes(paths["report"], lambda p: p.write_text(text))
    return paths
