"""Where a merged checkpoint came from: the resolved spec and its sha256, the project version, the
open_clip model config; and the safetensors metadata (str -> str) built from them.

The spec digest is the sha256 of the resolved spec's canonical JSON: keys sorted, no spaces
(separators "," and ":"), UTF-8, no NaN. `spec.json` holds the same object, indented.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from typing import Any

PROJECT = "calm-merge"


def resolved_spec(spec: Any) -> dict[str, Any]:
    """What was merged as plain JSON, every option explicit (calm.spec.MergeSpec.spec_json:
    no run options, no request-only fields)."""
    return spec.spec_json()


def canonical_json(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def spec_sha256(spec_data: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(spec_data)).hexdigest()


def package_version(name: str = PROJECT) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def checkpoint_metadata(report: dict[str, Any], spec_data: dict[str, Any] | None) -> dict[str, str]:
    """merged.safetensors metadata: format, method, arch, seed, tasks (a JSON list), spec_sha256
    (with a spec), calm_merge_version, open_clip_version. Values come from the spec when given,
    else from the report; missing ones are left out."""
    spec_data = spec_data or {}
    model = spec_data.get("model") or {}
    tasks = [t.get("name") for t in spec_data.get("tasks") or []] or report.get("tasks")
    values: dict[str, Any] = {
        "format": "pt",
        "method": spec_data.get("method", report.get("method")),
        "arch": model.get("arch", report.get("arch")),
        "seed": spec_data.get("seed", report.get("seed")),
        "tasks": json.dumps(tasks) if tasks else None,
        "spec_sha256": spec_sha256(spec_data) if spec_data else None,
        "calm_merge_version": package_version(),
        "open_clip_version": package_version("open_clip_torch"),
    }
    return {k: str(v) for k, v in values.items() if v is not None}


def open_clip_config(arch: str, custom_config: dict[str, Any] | None) -> dict[str, Any] | None:
    """open_clip's folder format ({"model_cfg", "preprocess_cfg"}, what
    `create_model_and_transforms("local-dir:<folder>")` reads): the custom config, or the
    built-in config of `arch`; None when neither is known. The preprocessing is open_clip's
    default, the one the merge evaluated with."""
    import open_clip
    from open_clip.transform import PreprocessCfg

    model_cfg = custom_config if custom_config is not None else open_clip.get_model_config(arch)
    if model_cfg is None:
        return None
    preprocess = asdict(PreprocessCfg())
    size = (model_cfg.get("vision_cfg") or {}).get("image_size")
    if size is not None:
        preprocess["size"] = size
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess}
