"""The result folder stands alone: provenance metadata, open_clip config, resolved spec, model
card (whose loading lines are run here), report.html; the renderers survive missing pieces."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from calm.model_card import render_model_card
from calm.provenance import canonical_json, spec_sha256
from calm.report_html import render_report_html
from calm.report_svg import layer_rows
from calm.result import save_result
from calm.result_files import RESULT_FILES

EXTERNAL = re.compile(r"(src|href)\s*=|url\(|@import|<script|<link|<iframe|<img", re.I)


def _meta(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_save_result_writes_every_file_with_provenance(tiny_result: Any, tiny_spec: Any,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "out"
    paths = save_result(tiny_result, out, tiny_spec)
    assert {p.name for p in out.iterdir()} == set(RESULT_FILES.values())
    assert {k: p.name for k, p in paths.items()} == RESULT_FILES
    spec = json.loads((out / "spec.json").read_text())
    assert spec["options"]["epochs"] == 3 and spec["options"]["lr"] == "auto"  # defaults explicit
    meta = _meta(out / "merged.safetensors")
    assert meta["method"] == "calm" and meta["arch"] == tiny_spec.model.arch and meta["seed"] == "5"
    assert meta["spec_sha256"] == spec_sha256(spec) == __import__("hashlib").sha256(
        canonical_json(spec)).hexdigest()
    assert json.loads(meta["tasks"]) == ["t0", "t1", "t2"] and meta["calm_merge_version"]
    assert json.loads(_meta(out / "masks.safetensors")["tasks"]) == ["t1", "t0"]
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["model_cfg"] == tiny_spec.model.custom_config and config["preprocess_cfg"]["size"] == 16
    assert oct((out / "report.json").stat().st_mode & 0o777) == "0o644"


def test_model_card_loading_lines_work(tiny_result: Any, tiny_spec: Any, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the card's code block, as written, in the output folder."""
    from calm.models import build_model

    out = tmp_path / "out"
    save_result(tiny_result, out, tiny_spec)
    card = (out / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert len(code.strip().splitlines()) == 3
    monkeypatch.chdir(out)
    scope: dict[str, Any] = {}
    exec(code, scope)  # noqa: S102 - our own generated snippet
    ref, preprocess = build_model(tiny_spec.model.arch, tiny_result.state_dict)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(scope["model"].encode_image(x), ref.encode_image(x))
    assert repr(scope["preprocess"]).replace("(", "[").replace(")", "]") == \
        repr(preprocess).replace("(", "[").replace(")", "]")
    assert "| t1 | 50.00 | 80.00 | 71.00 | 55.00 |" in card and "| **average** |" in card
    assert "`plan`: efficient" in card and "| t0 | 3 |" in card  # per-step settings as a table


def test_report_html_has_a_bar_per_value_and_a_cell_per_tensor(tiny_result: Any, tiny_spec: Any,
                                                               tmp_path: Path) -> None:
    save_result(tiny_result, tmp_path, tiny_spec)
    html = (tmp_path / "report.html").read_text()
    assert not EXTERNAL.search(html), EXTERNAL.search(html)
    accuracy_bars = 4 * (3 + 1)  # four kinds x (three tasks + average)
    agreement_bars = 2 * 3
    assert html.count('<rect class="bar"') == accuracy_bars + agreement_bars
    assert html.count('<rect class="cell"') == sum(len(m) for m in tiny_result.masks.values())
    assert html.index("<h3>t1") < html.index("<h3>t0")  # masks in merge order
    assert "spec sha256" in html and "efficient" in html and "lr_relative" in html


def test_save_result_without_spec(tiny_result: Any, tmp_path: Path) -> None:
    paths = save_result(tiny_result, tmp_path)
    assert "spec" not in paths and not (tmp_path / "spec.json").exists()
    assert "spec_sha256" not in _meta(paths["merged"]) and _meta(paths["merged"])["method"] == "calm"
    assert "spec.json" not in paths["model_card"].read_text()
    assert json.loads(paths["config"].read_text())["model_cfg"]["embed_dim"] == 32  # the registered arch


def test_renderers_survive_missing_and_odd_pieces() -> None:
    for report in ({}, {"accuracy": "x", "method_info": [1], "average": None, "mask_density": 3,
                        "tasks": "t0", "pseudo_label_agreement": {"merged": {"t0": "nan"}}}):
        html = render_report_html(report, {"t0": {}})
        assert "No labelled eval data" in html and "kept no masks" in html
        assert "No labelled eval data" in render_model_card(report)
    baselines_only = {"method": "task_arithmetic", "accuracy": {"merged": {"a": 0.5}},
                      "method_info": {"scaling": 0.4}, "mask_density": {}}
    html = render_report_html(baselines_only, {})
    assert html.count('<rect class="bar"') == 1 and '<rect class="cell"' not in html
    assert "kept no masks" in html and "scaling" in html
    assert "<script" not in render_report_html({"method": "<script>x</script>", "tasks": ["<b>"]})


def test_layers_group_by_block() -> None:
    block = ("attn.in_proj_weight", "mlp.c_fc.bias")
    names = ["visual.class_embedding", "visual.conv1.weight", "visual.proj"] + [
        f"visual.transformer.resblocks.{i}.{p}" for i in range(3) for p in block]
    prefix, blocks, other = layer_rows({n: 0.1 for n in names})
    assert prefix == "transformer.resblocks" and [r for r, _ in blocks] == ["0", "1", "2"]
    assert [c for c, _ in blocks[0][1]] == ["attn.in_proj_weight", "mlp.c_fc.bias"]
    assert other == [("other", [("class_embedding", 0.1), ("conv1.weight", 0.1), ("proj", 0.1)])]
