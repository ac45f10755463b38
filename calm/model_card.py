"""The output folder's README.md: what was merged, how, how well, and how to load it.

Plain Markdown from report.json, the resolved spec and merged.safetensors' metadata; every
piece is optional (no eval data -> no accuracy table).
"""

from __future__ import annotations

import json
from pathlib import PurePath
from typing import Any

from calm.report_html import PLAN_KEYS, accuracy_kinds, candidate_rows, fmt
from calm.result_files import (
    CONFIG_FILE,
    MASKS_FILE,
    MERGED_FILE,
    REPORT_FILE,
    REPORT_HTML_FILE,
    SPEC_FILE,
)

FILE_NOTES = {
    MERGED_FILE: "the merged model: the full open_clip state dict (image tower merged, text tower = base)",
    CONFIG_FILE: "open_clip model + preprocessing config (`local-dir:` format)",
    SPEC_FILE: "the resolved merge spec (all options explicit)",
    MASKS_FILE: "binary masks of CALM's sequential tasks (`<task>::<tensor>`, uint8)",
    REPORT_FILE: "evaluation, plan, chosen settings and timings",
    REPORT_HTML_FILE: "charts: accuracy per task, mask density per layer (open in a browser)",
}


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _rounded(value: Any) -> Any:
    """Floats to 4 significant digits, through lists and dicts (for inline JSON)."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return [_rounded(v) for v in value] if isinstance(value, list) else value


def _inline(value: Any) -> str:
    if isinstance(value, dict | list) and not (isinstance(value, list) and
                                               all(not isinstance(v, dict | list) for v in value)):
        return f"`{json.dumps(_rounded(value), separators=(', ', ': '), default=str)}`"
    if isinstance(value, list):
        return ", ".join(fmt(v) for v in value) or "—"
    return fmt(value)


def what_was_merged(spec: dict[str, Any], report: dict[str, Any], meta: dict[str, str]) -> list[str]:
    model = spec.get("model") or {}
    arch = model.get("arch") or report.get("arch") or meta.get("arch", "?")
    lines = ["## What was merged", "",
             f"- Architecture: `{arch}` (config in `{CONFIG_FILE}`)"]
    if model.get("checkpoint"):
        lines.append(f"- Base checkpoint: `{PurePath(str(model['checkpoint'])).name}`")
    tasks = spec.get("tasks") or [{"name": t} for t in report.get("tasks") or []]
    lines += ["", "| task | classes | fine-tuned checkpoint |", "|---|---|---|"]
    for t in tasks:
        classes = t.get("classnames")
        n = f"{len(classes)} ({', '.join(map(str, classes[:6]))}{', …' if len(classes) > 6 else ''})" \
            if classes else ("head file" if t.get("head") else "—")
        ckpt = PurePath(str(t["checkpoint"])).name if t.get("checkpoint") else "—"
        lines.append(f"| {_cell(t.get('name'))} | {_cell(n)} | {_cell(ckpt)} |")
    return lines


def _md_table(rows: dict[str, Any]) -> list[str]:
    """A dict of dicts as a Markdown table (rows x the union of their keys)."""
    cols = list(dict.fromkeys(k for v in rows.values() for k in v))
    out = ["| | " + " | ".join(_cell(c) for c in cols) + " |", "|---|" + "---|" * len(cols)]
    out += [f"| {_cell(name)} | " + " | ".join(_cell(_inline(v.get(c))) for c in cols) + " |"
            for name, v in rows.items()]
    return out


def _settings(title: str, items: list[tuple[str, Any]]) -> list[str]:
    """Scalars and flat lists as bullets; dicts of dicts (per-step settings) as tables."""
    if not items:
        return []
    tables = [(k, v) for k, v in items if isinstance(v, dict) and v
              and all(isinstance(x, dict) for x in v.values())]
    lines = ["", f"{title}:", ""] + [f"- `{k}`: {_inline(v)}" for k, v in items
                                     if (k, v) not in tables]
    for key, value in tables:
        lines += ["", f"`{key}`:", ""] + _md_table(value)
    return lines


def method_lines(spec: dict[str, Any], report: dict[str, Any]) -> list[str]:
    info = report.get("method_info") if isinstance(report.get("method_info"), dict) else {}
    method = spec.get("method") or report.get("method") or "?"
    lines = ["", "## Method", "", f"Method: `{method}`, seed {fmt(spec.get('seed', report.get('seed')))}."]
    lines += _settings("Plan", [(k, info[k]) for k in PLAN_KEYS if k in info])
    lines += _settings("Chosen settings", [(k, v) for k, v in info.items()
                                           if k not in PLAN_KEYS and k != "candidates"])
    lines += candidate_lines(report)
    lines += _settings("Options", list((spec.get("options") or {}).items()))
    baselines = report.get("baselines_info")
    if isinstance(baselines, dict) and baselines:
        lines += ["", "Baselines: " + "; ".join(f"`{k}` {_inline(v)}" for k, v in baselines.items())]
    return lines


def candidate_lines(report: dict[str, Any]) -> list[str]:
    """`auto`'s candidates: held-out agreement chose; test accuracy is shown, never used."""
    rows = candidate_rows(report)
    if not rows:
        return []

    def pct(v: float | None) -> str:
        return "—" if v is None else f"{100 * v:.2f}"

    lines = ["", "Candidates (chosen by held-out pseudo-label agreement; test accuracy is shown, "
             "never used):", "", "| candidate | held-out agreement (%) | test accuracy (%) |",
             "|---|---:|---:|"]
    return lines + [f"| {'**' + n + '** (chosen)' if chosen else _cell(n)} | {pct(a)} | {pct(acc)} |"
                    for n, a, acc, chosen in rows]


def accuracy_lines(report: dict[str, Any]) -> list[str]:
    acc = report.get("accuracy") if isinstance(report.get("accuracy"), dict) else {}
    kinds = accuracy_kinds(acc)
    if not kinds:
        return ["", "## Accuracy", "", "No labelled eval data was given: no accuracy table."]
    tasks = list(dict.fromkeys(t for k in kinds for t in acc[k]))
    lines = ["", "## Accuracy (top-1, %)", "", "| task | " + " | ".join(kinds) + " |",
             "|---|" + "---:|" * len(kinds)]

    def row(label: str, table: dict[str, Any], scale: float, spec: str) -> str:
        cells = [format(scale * v, spec) if isinstance(v := table.get(k), int | float) else "—"
                 for k in kinds]
        return f"| {_cell(label)} | " + " | ".join(cells) + " |"

    lines += [row(t, {k: acc[k].get(t) for k in kinds}, 100, ".2f") for t in tasks]
    for key, scale, spec in (("average", 100, ".2f"), ("normalized", 1, ".3f")):
        if isinstance(report.get(key), dict) and report[key]:
            lines.append(row(f"**{key}**", report[key], scale, spec))
    return lines


def load_lines() -> list[str]:
    return ["", "## Load it", "", "```python", "import open_clip",
            'model, _, preprocess = open_clip.create_model_and_transforms("local-dir:.", load_weights=False)',
            f'open_clip.load_checkpoint(model, "{MERGED_FILE}"); model.eval()', "```", "",
            "Paths are relative to this folder (elsewhere: `local-dir:/path/to/folder` and "
            f"`/path/to/folder/{MERGED_FILE}`). open_clip warns that it found several checkpoints and "
            "initialised the model randomly: the second line loads the merged weights. "
            '`open_clip.get_tokenizer("local-dir:.")` gives the tokenizer; the text tower is the '
            "base model's, so zero-shot heads built from class names work as before."]


def render_model_card(report: dict[str, Any], spec: dict[str, Any] | None = None,
                      meta: dict[str, str] | None = None, files: list[str] | None = None) -> str:
    """The card; `files`: the folder's file names (default: all that FILE_NOTES describes)."""
    spec, meta = spec or {}, meta or {}
    arch = (spec.get("model") or {}).get("arch") or report.get("arch") or meta.get("arch", "?")
    method = spec.get("method") or report.get("method") or "?"
    n = len(spec.get("tasks") or report.get("tasks") or [])
    lines = [f"# {arch}: {n} fine-tuned models merged with `{method}`", "",
             f"Made by calm-merge {meta.get('calm_merge_version', '?')} (open_clip "
             f"{meta.get('open_clip_version', '?')}). Spec sha256: `{meta.get('spec_sha256', '—')}`.",
             "", "| file | contents |", "|---|---|"]
    lines += [f"| `{name}` | {note} |" for name, note in FILE_NOTES.items()
              if files is None or name in files]
    lines += [""] + what_was_merged(spec, report, meta) + method_lines(spec, report)
    lines += accuracy_lines(report) + load_lines()
    return "\n".join(lines) + "\n"
