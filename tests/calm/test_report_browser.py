"""report.html renders in a real browser: headless Chromium (Debian's `chromium`) lays out every
accuracy bar and mask-density cell with a non-zero size, and a screenshot shows the charts.

Under CI a missing chromium fails the test (.ci/run installs it); elsewhere it skips.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from calm.report_svg import KIND_COLORS
from calm.result import save_result

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update")
# Appended to a copy of the page: measures the laid-out charts into the DOM that --dump-dom prints.
MEASURE = """<script>
const size = s => Array.from(document.querySelectorAll(s), e => {
  const r = e.getBoundingClientRect(); return [r.width, r.height]; });
const out = document.createElement("pre"); out.id = "measure";
out.textContent = JSON.stringify(
  {bars: size("rect.bar"), cells: size("rect.cell"), charts: size("svg.chart")});
document.body.appendChild(out);
</script>"""


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed; CI needs it for this test (`apt-get install -y chromium`, "
                    "as .ci/run does)")
    pytest.skip("chromium is not installed (apt-get install -y chromium)")


def run_chromium(tmp_path: Path, *args: str) -> str:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"  # fresh every run
    cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture
def browser() -> str:
    return chromium()


@pytest.fixture
def report_page(browser: str, tiny_result: Any, tiny_spec: Any, tmp_path: Path) -> Path:
    """report.html of the tiny result (the browser is looked for first: fail or skip early)."""
    save_result(tiny_result, tmp_path / "out", tiny_spec)
    return tmp_path / "out" / "report.html"


def test_charts_are_laid_out_with_non_zero_size(report_page: Path, tiny_result: Any, tmp_path: Path) -> None:
    probe = tmp_path / "probe.html"
    probe.write_text(report_page.read_text().replace("</body>", MEASURE + "</body>"))
    dom = run_chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="measure">(.*?)</pre>', dom, re.S)
    assert found, f"the page did not render: {dom[:500]}"
    sizes = json.loads(html.unescape(found.group(1)))
    assert len(sizes["bars"]) == 4 * 4 + 2 * 3  # accuracy (4 kinds x 3 tasks + average), agreement
    assert len(sizes["cells"]) == sum(len(m) for m in tiny_result.masks.values())
    assert len(sizes["charts"]) >= 2 + 2 * len(tiny_result.masks)
    for kind in ("bars", "cells", "charts"):
        assert all(w > 0 and h > 0 for w, h in sizes[kind]), (kind, sizes[kind])


def test_screenshot_shows_the_charts(report_page: Path, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "shot.png"
    run_chromium(tmp_path, "--window-size=1000,1400", "--hide-scrollbars", f"--screenshot={shot}",
                 report_page.as_uri())
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
        colors = rgb.getcolors(maxcolors=1 << 20) or []
    assert rgb.size == (1000, 1400)
    painted = sum(n for n, c in colors if c != (255, 255, 255))
    assert painted > 0.02 * 1000 * 1400, "the screenshot is (nearly) blank"
    merged = tuple(int(KIND_COLORS["merged"][i:i + 2], 16) for i in (1, 3, 5))
    assert sum(n for n, c in colors if c == merged) > 100, "no merged-accuracy bars were painted"
