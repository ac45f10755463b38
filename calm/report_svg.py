"""Inline SVG charts for report.html: grouped accuracy bars and a mask-density heatmap.

Pure string building (no torch, no plotting library, nothing fetched): every bar is a
`<rect class="bar">` and every heatmap cell a `<rect class="cell">`, each with a `<title>`
tooltip carrying the exact value.
"""

from __future__ import annotations

import math
from html import escape

KIND_COLORS = {"zero_shot": "#9aa0a6", "individual": "#4c78a8", "merged": "#f58518"}
BASELINE_COLORS = ("#54a24b", "#b279a2", "#e45756", "#72b7b2", "#eeca3b", "#9d755d")
VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
ZERO_COLOR = "#eceff1"
Row = tuple[str, list[tuple[str, float]]]  # (row label, [(column label, value)])


def palette(kinds: list[str]) -> dict[str, str]:
    """Fixed colours for the standard kinds; the others (baselines) take the palette in order,
    so one kind has one colour in every chart of a page."""
    others = [k for k in dict.fromkeys(kinds) if k not in KIND_COLORS]
    colors = {k: BASELINE_COLORS[i % len(BASELINE_COLORS)] for i, k in enumerate(others)}
    return {**KIND_COLORS, **colors}


def _text(x: float, y: float, label: str, cls: str, extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" class="{cls}"{extra}>{escape(label)}</text>'


def bar_chart(groups: list[str], series: list[tuple[str, dict[str, float]]], y_label: str,
              colors: dict[str, str]) -> str:
    """Grouped bars: one group per entry of `groups`, one bar per series (kind -> {group:
    fraction in [0, 1]}), coloured by `colors` (see `palette`). A missing value draws no bar."""
    bw, gap, left, top, height = 14, 2, 44, 12, 200
    bottom = min(140, 24 + int(3.8 * max([len(g) for g in groups] + [1])))  # labels at -35°
    group_w = len(series) * (bw + gap) + 20
    width = left + len(groups) * group_w + 10
    parts = [f'<svg class="chart bars" width="{width}" '
             f'height="{top + height + bottom}" role="img" aria-label="{escape(y_label)}">']
    for tick in range(0, 101, 20):
        y = top + height * (1 - tick / 100)
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(_text(left - 6, y + 4, f"{tick}", "tick", ' text-anchor="end"'))
    parts.append(_text(12, top + height / 2, y_label, "axis",
                       f' text-anchor="middle" transform="rotate(-90 12 {top + height / 2:.1f})"'))
    for g, group in enumerate(groups):
        x0 = left + g * group_w + 10
        for s, (kind, values) in enumerate(series):
            value = values.get(group)
            if value is None or not math.isfinite(value):
                continue
            h = max(0.0, min(1.0, value)) * height
            x, y = x0 + s * (bw + gap), top + height - h
            parts.append(
                f'<rect class="bar" data-kind="{escape(kind)}" data-task="{escape(group)}" '
                f'x="{x}" y="{y:.1f}" width="{bw}" height="{max(h, 0.5):.1f}" '
                f'fill="{colors.get(kind, "#888")}"><title>{escape(group)} · {escape(kind)}: '
                f"{100 * value:.2f}%</title></rect>"
            )
        cx, cy = x0 + len(series) * (bw + gap) / 2, top + height + 12
        parts.append(_text(cx, cy, group, "label",
                           f' text-anchor="end" transform="rotate(-35 {cx:.1f} {cy:.1f})"'))
    parts.append("</svg>")
    return "".join(parts)


def legend(kinds: list[str], colors: dict[str, str]) -> str:
    items = "".join(
        f'<span class="key"><i style="background:{colors.get(k, "#888")}"></i>{escape(k)}</span>'
        for k in kinds
    )
    return f'<div class="legend">{items}</div>'


def log_floor(values: list[float]) -> int:
    """Exponent of the colour scale's lower end: the smallest non-zero density's decade."""
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    if not positive:
        return -6
    return max(-12, min(-1, math.floor(math.log10(min(positive)))))


def density_color(value: float, floor: int) -> str:
    """Log-scale viridis from 10**floor to 1; exactly zero is a light grey."""
    if not value > 0:
        return ZERO_COLOR
    t = (math.log10(min(value, 1.0)) - floor) / -floor
    t = max(0.0, min(1.0, t)) * (len(VIRIDIS) - 1)
    i = min(int(t), len(VIRIDIS) - 2)
    f = t - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(VIRIDIS[i], VIRIDIS[i + 1], strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap(rows: list[Row], floor: int, caption: str) -> str:
    """Rows of cells; columns are the union of the rows' column labels, in first-seen order."""
    columns = list(dict.fromkeys(c for _, cells in rows for c, _ in cells))
    cw, ch = 18, 16
    left = 8 + 7 * max([len(r) for r, _ in rows] + [4])
    top = 12 + int(5 * max([len(c) for c in columns] + [4]))
    right = 10 + int(3.5 * max([len(c) for c in columns] + [0]))  # rotated labels lean right
    width, height = left + cw * len(columns) + right, top + ch * len(rows) + 8
    parts = [f'<svg class="chart heatmap" width="{width}" '
             f'height="{height}" role="img" aria-label="{escape(caption)}">']
    for j, col in enumerate(columns):
        cx = left + j * cw + cw / 2
        parts.append(_text(cx, top - 6, col, "label", f' transform="rotate(-55 {cx:.1f} {top - 6})"'))
    for i, (label, cells) in enumerate(rows):
        y = top + i * ch
        parts.append(_text(left - 6, y + ch - 4, label, "label", ' text-anchor="end"'))
        for col, value in cells:
            x = left + columns.index(col) * cw
            parts.append(
                f'<rect class="cell" x="{x}" y="{y}" width="{cw - 1}" height="{ch - 1}" '
                f'fill="{density_color(value, floor)}"><title>{escape(label)} · {escape(col)}: '
                f"{value:.3g}</title></rect>"
            )
    parts.append("</svg>")
    return "".join(parts)


def color_scale(floor: int) -> str:
    """The heatmap's legend: zero, then one swatch per decade from 10**floor to 1."""
    swatches = [f'<span class="key"><i style="background:{ZERO_COLOR}"></i>0</span>']
    for e in range(floor, 1):
        label = "1" if e == 0 else f"1e{e}"
        swatches.append(f'<span class="key"><i style="background:{density_color(10.0**e, floor)}">'
                        f"</i>{label}</span>")
    return f'<div class="legend scale">{"".join(swatches)}</div>'


def layer_rows(density: dict[str, float]) -> tuple[str, list[Row], list[Row]]:
    """Group tensor names by block: the prefix up to the last numeric component is the row
    ("visual.transformer.resblocks.3"), the rest the column ("attn.in_proj_weight"). Returns
    the block rows' shared prefix (as a caption), the block rows, and one row of the tensors
    outside any block."""
    blocks: dict[str, list[tuple[str, float]]] = {}
    other: list[tuple[str, float]] = []
    for name, value in density.items():
        short = name.removeprefix("visual.")
        parts = short.split(".")
        idx = [i for i, p in enumerate(parts[:-1]) if p.isdigit()]
        if idx:
            cut = idx[-1] + 1
            blocks.setdefault(".".join(parts[:cut]), []).append((".".join(parts[cut:]), value))
        else:
            other.append((short, value))
    names = list(blocks)
    prefix = names[0].rsplit(".", 1)[0] + "." if names else ""
    if not all(n.startswith(prefix) for n in names):
        prefix = ""
    rows = [(n.removeprefix(prefix), cells) for n, cells in blocks.items()]
    return prefix.rstrip("."), rows, ([("other", other)] if other else [])
