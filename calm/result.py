"""What a merge returns, and how it is written to disk: one folder of files (calm.result_files),
each written atomically. The formats are documented in docs/results.md."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from calm.mask_density import mask_density, tensor_densities
from calm.model_card import render_model_card
from calm.provenance import checkpoint_metadata, open_clip_config, resolved_spec
from calm.report_html import render_report_html
from calm.result_files import (
    CONFIG_FILE,
    MASK_KEY_SEP,
    MASKS_FILE,
    MERGED_FILE,
    MODEL_CARD_FILE,
    REPORT_FILE,
    REPORT_HTML_FILE,
    RESULT_FILES,
    SPEC_FILE,
)

FILE_MODE = 0o644
__all__ = ["MASK_KEY_SEP", "MASKS_FILE", "MERGED_FILE", "REPORT_FILE", "MergeResult", "save_result"]


@dataclass
class MergeResult:
    state_dict: dict[str, torch.Tensor]  # the full open_clip state dict, merged, on CPU
    masks: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # task -> name -> bool
    report: dict[str, Any] = field(default_factory=dict)  # JSON-able evaluation + settings

    def mask_density(self) -> dict[str, dict[str, float]]:
        """task -> param name -> fraction of entries taken from that task's vector."""
        return {task: tensor_densities(per) for task, per in self.masks.items()}

    def overall_density(self) -> dict[str, float]:
        """task -> fraction of all its mask's entries taken from that task's vector."""
        return {task: mask_density(per.values()) for task, per in self.masks.items()}


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call `write(tmp_path)` then rename onto `path`, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600; results are meant to be read and shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda p: p.write_text(text, encoding="utf-8"))


def save_state_dict(state: dict[str, torch.Tensor], path: Path, meta: dict[str, str] | None = None) -> None:
    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    atomic_write_bytes(path, lambda p: save_file(contiguous, str(p), metadata=meta))


def flatten_masks(masks: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {
        f"{task}{MASK_KEY_SEP}{name}": m.to(torch.uint8)
        for task, per in masks.items()
        for name, m in per.items()
    }


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


def save_result(result: MergeResult, out_dir: Path, spec: Any = None) -> dict[str, Path]:
    """Write the result folder under `out_dir`: merged.safetensors (with provenance metadata),
    masks.safetensors, report.json, open_clip_config.json, report.html, README.md, and with
    `spec` (the calm.spec.MergeSpec that was run) spec.json. Returns name -> path of the files
    written, names as in calm.result_files.RESULT_FILES."""
    out_dir = Path(out_dir)
    spec_data = resolved_spec(spec) if spec is not None else None
    meta = checkpoint_metadata(result.report, spec_data)
    model = (spec_data or {}).get("model") or {}
    config = open_clip_config(model.get("arch") or str(result.report.get("arch", "")),
                              model.get("custom_config"))
    texts: dict[str, Callable[[], str]] = {
        REPORT_FILE: lambda: _json(result.report),
        SPEC_FILE: lambda: _json(spec_data),
        CONFIG_FILE: lambda: _json(config),
        REPORT_HTML_FILE: lambda: render_report_html(
            result.report, result.mask_density(), meta, (spec_data or {}).get("options")),
    }
    skip = {SPEC_FILE} if spec_data is None else set()
    skip |= {CONFIG_FILE} if config is None else set()
    written = [f for f in RESULT_FILES.values() if f not in skip]
    texts[MODEL_CARD_FILE] = lambda: render_model_card(result.report, spec_data, meta, written)
    save_state_dict(result.state_dict, out_dir / MERGED_FILE, meta)
    tasks = json.dumps(list(result.masks))
    save_state_dict(flatten_masks(result.masks), out_dir / MASKS_FILE, {"format": "pt", "tasks": tasks})
    for filename, render in texts.items():
        if filename not in skip:
            atomic_write_text(out_dir / filename, render())
    return {name: out_dir / f for name, f in RESULT_FILES.items() if f not in skip}
