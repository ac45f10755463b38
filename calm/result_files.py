"""The files a merge writes into its output folder: the one list, read by the library, the CLI,
the worker, the shared layer and the API. No torch here (the API imports it).

The formats are documented in docs/results.md.
"""

from __future__ import annotations

MERGED_FILE = "merged.safetensors"  # full open_clip state dict + provenance metadata
MASKS_FILE = "masks.safetensors"  # uint8 0/1 per sequential task and tensor
REPORT_FILE = "report.json"  # evaluation, plan, chosen settings, timings
SPEC_FILE = "spec.json"  # the resolved spec (all options explicit)
CONFIG_FILE = "open_clip_config.json"  # {"model_cfg", "preprocess_cfg"}: open_clip's local-dir format
MODEL_CARD_FILE = "README.md"  # model card
REPORT_HTML_FILE = "report.html"  # self-contained charts
MASK_KEY_SEP = "::"  # masks.safetensors keys are "<task>::<param name>"

# name -> file name, in the order a person reads them.
RESULT_FILES: dict[str, str] = {
    "merged": MERGED_FILE,
    "masks": MASKS_FILE,
    "report": REPORT_FILE,
    "spec": SPEC_FILE,
    "config": CONFIG_FILE,
    "model_card": MODEL_CARD_FILE,
    "report_html": REPORT_HTML_FILE,
}

MEDIA_TYPES: dict[str, str] = {
    ".safetensors": "application/octet-stream",
    ".json": "application/json",
    ".md": "text/markdown; charset=utf-8",
    ".html": "text/html; charset=utf-8",
}


def media_type(filename: str) -> str:
    """The Content-Type a result file is served with."""
    suffix = filename[filename.rfind("."):] if "." in filename else ""
    return MEDIA_TYPES.get(suffix, "application/octet-stream")
