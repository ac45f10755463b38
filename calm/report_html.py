"""report.html: one self-contained page (inline CSS and SVG, no scripts, nothing fetched) from
report.json, the masks' per-tensor density and the checkpoint's provenance metadata.

Reads the report defensively: a missing or odd-shaped key leaves its section out or says why
(no eval data -> no accuracy chart; a method without masks -> no heatmap).
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

from calm import report_svg as svg

KIND_ORDER = ("zero_shot", "individual", "merged")
PLAN_KEYS = ("plan", "plan_reason", "base_group", "sequential_tasks", "base_lambda", "chosen_by")
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1100px;
color:#1f2328;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de}
h3{font-size:15px;margin:16px 0 6px}.sub{color:#59636e}.note{color:#59636e;font-style:italic}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #d0d7de;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f6f8fa}td.num{text-align:right;
font-variant-numeric:tabular-nums}.scroll{overflow-x:auto}.chart text{font-size:11px;fill:#1f2328}
.chart .grid{stroke:#e5e7eb}.chart .axis{font-size:12px}.legend{display:flex;flex-wrap:wrap;gap:12px;
margin:4px 0 8px}.key i{display:inline-block;width:12px;height:12px;margin-right:4px;
vertical-align:-2px;border:1px solid #0002}.scale{gap:4px}code{background:#f6f8fa;padding:0 3px}
"""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _num(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}" if value and not 1e-3 <= abs(value) < 1e5 else f"{value:.4g}"
    return str(value)


def value_html(value: Any, depth: int = 0) -> str:
    """Any JSON value as HTML: scalars formatted, lists joined, dicts as (nested) tables."""
    if isinstance(value, dict) and value and depth < 4:
        inner = list(value.values())
        if all(isinstance(v, dict) for v in inner):
            cols = list(dict.fromkeys(k for v in inner for k in v))
            head = "".join(f"<th>{escape(str(c))}</th>" for c in cols)
            body = "".join(
                f"<tr><th>{escape(str(k))}</th>"
                + "".join(f"<td>{value_html(v.get(c), depth + 1)}</td>" for c in cols) + "</tr>"
                for k, v in value.items()
            )
            return f'<table><tr><th></th>{head}</tr>{body}</table>'
        return kv_table(value, depth + 1)
    if isinstance(value, list):
        if all(not isinstance(v, dict | list) for v in value):
            return escape(", ".join(fmt(v) for v in value)) or "—"
        return "<ol>" + "".join(f"<li>{value_html(v, depth + 1)}</li>" for v in value) + "</ol>"
    return escape(fmt(value))


def kv_table(data: dict[str, Any], depth: int = 0) -> str:
    rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{value_html(v, depth)}</td></tr>"
                   for k, v in data.items())
    return f"<table>{rows}</table>"


def candidate_rows(report: dict[str, Any]) -> list[tuple[str, float | None, float | None, bool]]:
    """`auto`'s candidates: (name, held-out agreement, mean test accuracy or None, chosen)."""
    info = _dict(report.get("method_info"))
    return [(str(name), _num(_dict(c).get("agreement")), _num(_dict(c).get("test_accuracy")),
             name == info.get("chosen"))
            for name, c in _dict(info.get("candidates")).items()]


def candidates_html(report: dict[str, Any]) -> str:
    rows = candidate_rows(report)
    if not rows:
        return ""
    body = "".join(
        f"<tr><th>{escape(n)}{' (chosen)' if chosen else ''}</th><td>{escape(fmt(a))}</td>"
        f"<td>{escape(fmt(acc))}</td></tr>" for n, a, acc, chosen in rows)
    return ("<h3>Candidates</h3><p class=\"sub\">Chosen by held-out pseudo-label agreement; test "
            "accuracy (when eval data was given) is shown, never used.</p><table><tr><th>candidate"
            f"</th><th>held-out agreement</th><th>test accuracy</th></tr>{body}</table>")


def accuracy_kinds(accuracy: dict[str, Any]) -> list[str]:
    """zero_shot, individual, merged first, then the baselines in report order."""
    kinds = [k for k, v in accuracy.items() if isinstance(v, dict) and v]
    return sorted(kinds, key=lambda k: KIND_ORDER.index(k) if k in KIND_ORDER else len(KIND_ORDER))


def _series(table: dict[str, Any], kinds: list[str]) -> list[tuple[str, dict[str, float]]]:
    out = []
    for kind in kinds:
        values = {t: v for t, raw in _dict(table.get(kind)).items() if (v := _num(raw)) is not None}
        out.append((kind, values))
    return out


def report_palette(report: dict[str, Any]) -> dict[str, str]:
    kinds = accuracy_kinds(_dict(report.get("accuracy")))
    return svg.palette(kinds + accuracy_kinds(_dict(report.get("pseudo_label_agreement"))))


def accuracy_section(report: dict[str, Any]) -> str:
    accuracy = _dict(report.get("accuracy"))
    kinds = accuracy_kinds(accuracy)
    if not kinds:
        has_agreement = bool(_dict(report.get("pseudo_label_agreement")))
        below = "; the agreement with the pseudo-labels is below" if has_agreement else ""
        return ('<h2>Accuracy</h2><p class="note">No labelled eval data was given, so there is no '
                f"accuracy chart{below}.</p>")
    series = _series(accuracy, kinds)
    average = _dict(report.get("average"))
    tasks = list(dict.fromkeys(t for _, values in series for t in values))
    for kind, values in series:
        if _num(average.get(kind)) is not None:
            values["average"] = float(average[kind])
    groups = tasks + (["average"] if average else [])
    head = "".join(f"<th>{escape(k)}</th>" for k in kinds)
    rows = "".join(
        f"<tr><th>{escape(g)}</th>"
        + "".join(f'<td class="num">{"—" if g not in v else f"{100 * v[g]:.2f}"}</td>' for _, v in series)
        + "</tr>" for g in groups
    )
    normalized = _dict(report.get("normalized"))
    if normalized:
        rows += "<tr><th>normalized</th>" + "".join(
            f'<td class="num">{"—" if (v := _num(normalized.get(k))) is None else f"{v:.3f}"}</td>'
            for k in kinds) + "</tr>"
    colors = report_palette(report)
    return (f"<h2>Accuracy</h2>{svg.legend(kinds, colors)}<div class=\"scroll\">"
            f"{svg.bar_chart(groups, series, 'top-1 accuracy (%)', colors)}</div>"
            f"<table><tr><th>task</th>{head}</tr>{rows}</table>")


def agreement_section(report: dict[str, Any]) -> str:
    agreement = _dict(report.get("pseudo_label_agreement"))
    kinds = accuracy_kinds(agreement)
    if not kinds:
        return ""
    series, colors = _series(agreement, kinds), report_palette(report)
    groups = list(dict.fromkeys(t for _, values in series for t in values))
    return ("<h2>Agreement with the pseudo-labels</h2><p class=\"sub\">Share of each task's "
            "unlabeled inputs on which a merged model predicts the individual model's label "
            f"(no test labels).</p>{svg.legend(kinds, colors)}<div class=\"scroll\">"
            f"{svg.bar_chart(groups, series, 'agreement (%)', colors)}</div>")


def plan_section(report: dict[str, Any], options: dict[str, Any] | None) -> str:
    info = _dict(report.get("method_info"))
    key = {k: info[k] for k in PLAN_KEYS if k in info}
    rest = {k: v for k, v in info.items() if k not in key and k != "candidates"}
    method = escape(fmt(report.get("method")))
    parts = [f"<h2>Plan and chosen settings</h2><p>Method <code>{method}</code>.</p>"]
    if key:
        parts.append(f"<h3>Plan</h3>{kv_table(key)}")
    if rest:
        parts.append(f'<h3>Chosen settings</h3><div class="scroll">{kv_table(rest)}</div>')
    parts.append(candidates_html(report))
    if not info:
        parts.append('<p class="note">The report records no method details.</p>')
    if options:
        parts.append(f"<h3>Options (resolved spec)</h3>{kv_table(options)}")
    baselines = _dict(report.get("baselines_info"))
    if baselines:
        parts.append(f"<h3>Baselines</h3>{value_html(baselines)}")
    return "".join(parts)


def masks_section(report: dict[str, Any], density: dict[str, dict[str, float]]) -> str:
    masks = {t: d for t, d in density.items() if d}
    if not masks:
        return ('<h2>Mask density</h2><p class="note">This merge kept no masks (only CALM\'s '
                "sequential tasks have masks), so there is no heatmap.</p>")
    overall = _dict(report.get("mask_density"))
    floor = svg.log_floor([v for d in masks.values() for v in d.values()])
    parts = ["<h2>Mask density per layer</h2><p class=\"sub\">Share of each tensor's entries taken "
             "from the sequential task's own vector (log colour scale; hover a cell for its value).</p>",
             svg.color_scale(floor)]
    for task, per in masks.items():
        prefix, blocks, other = svg.layer_rows(per)
        total = _num(overall.get(task))
        parts.append(f"<h3>{escape(task)}" + (f" — overall {total:.3g}" if total is not None else "")
                     + "</h3>")
        if blocks:
            rows = f"rows: <code>{escape(prefix)}.N</code>, " if prefix else "rows: blocks, "
            parts.append(f'<p class="sub">{rows}columns: tensors of the block</p><div class="scroll">'
                         f'{svg.heatmap(blocks, floor, prefix or "blocks")}</div>')
        if other:
            parts.append('<p class="sub">tensors outside the blocks</p><div class="scroll">'
                         f'{svg.heatmap(other, floor, "other tensors")}</div>')
    return "".join(parts)


def details_section(report: dict[str, Any]) -> str:
    parts = ["<h2>Details</h2>"]
    for key, title in (("pseudo_labels", "Pseudo-labels"), ("samples", "Eval samples"),
                       ("timings", "Timings (s)")):
        if _dict(report.get(key)):
            parts.append(f"<h3>{title}</h3>{value_html(report[key])}")
    return "".join(parts) if len(parts) > 1 else ""


def render_report_html(report: dict[str, Any], density: dict[str, dict[str, float]] | None = None,
                       meta: dict[str, str] | None = None, options: dict[str, Any] | None = None) -> str:
    """The whole page. `density`: task -> tensor name -> share of mask entries set; `meta`:
    merged.safetensors' metadata; `options`: the resolved method options."""
    report, meta = _dict(report), meta or {}
    method, arch = fmt(report.get("method", meta.get("method"))), fmt(report.get("arch", meta.get("arch")))
    tasks = report.get("tasks") if isinstance(report.get("tasks"), list) else []
    facts = {"tasks": ", ".join(map(str, tasks)) or None, "seed": report.get("seed"),
             "device": report.get("device"), "spec sha256": meta.get("spec_sha256"),
             "calm-merge": meta.get("calm_merge_version")}
    sub = " · ".join(f"{k}: {escape(fmt(v))}" for k, v in facts.items() if v is not None)
    body = "".join((accuracy_section(report), agreement_section(report),
                    plan_section(report, options), masks_section(report, density or {}),
                    details_section(report)))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Merge report: '
            f"{escape(method)} · {escape(arch)}</title><style>{CSS}</style></head><body>"
            f"<h1>Merge report: {escape(method)} on {escape(arch)}</h1><p class=\"sub\">{sub}</p>"
            f"{body}</body></html>\n")
