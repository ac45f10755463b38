"""`method: "auto"`: the candidates run on one loaded context, the best by held-out pseudo-label
agreement is returned (exactly what that candidate gives alone), and every candidate's score and
test accuracy reach the report, the model card and report.html."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pydantic import ValidationError

from calm import MergeRequest, merge
from calm.auto_options import DEFAULT_CANDIDATES, AutoOptions
from calm.model_card import render_model_card
from calm.progress import Progress
from calm.registry import BASELINE_NAMES, REGISTRY, parse_options
from calm.report_html import render_report_html
from tests.worker_helpers import FAST_OPTIONS, SEED, tiny_suite

CANDIDATES = ["calm", "tsv_m", "ties", "average"]
CANDIDATE_OPTIONS = {"calm": FAST_OPTIONS, "tsv_m": {"scaling_grid": [1.0, 1.5]},
                     "ties": {"scaling_grid": [0.5, 1.0]}}


def _spec(method: str, options: dict[str, Any]) -> Any:
    return MergeRequest.model_validate(tiny_suite().merge_spec(
        method, options=options, seed=SEED, run={"device": "cpu"}))


def test_auto_keeps_the_best_candidate_and_reports_all() -> None:
    spec = _spec("auto", {"candidates": CANDIDATES, "candidate_options": CANDIDATE_OPTIONS})
    events: list[Progress] = []
    result = merge(spec, on_progress=events.append)
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    info = result.report["method_info"]
    table = info["candidates"]
    assert list(table) == CANDIDATES
    scores = {n: c["agreement"] for n, c in table.items()}
    assert info["chosen"] == max(CANDIDATES, key=lambda n: (scores[n], -CANDIDATES.index(n)))
    for c in table.values():
        assert 0.0 <= c["agreement"] <= 1.0 and 0.0 <= c["test_accuracy"] <= 1.0
        assert set(c["test_accuracy_per_task"]) == set(result.report["tasks"])
    # the merged model is exactly the chosen candidate's own merge
    chosen = info["chosen"]
    alone = merge(_spec(chosen, CANDIDATE_OPTIONS.get(chosen, {})))
    for name, v in alone.state_dict.items():
        assert torch.equal(result.state_dict[name], v), name
    assert result.report["accuracy"]["merged"] == alone.report["accuracy"]["merged"]
    assert table[chosen]["test_accuracy_per_task"] == alone.report["accuracy"]["merged"]

    card = render_model_card(result.report, spec.model_dump(mode="json"))
    assert "| candidate | held-out agreement (%) | test accuracy (%) |" in card
    assert f"**{chosen}** (chosen)" in card
    html = render_report_html(result.report)
    assert "<h3>Candidates</h3>" in html and f"{chosen} (chosen)" in html


def test_auto_options_are_checked_up_front() -> None:
    assert AutoOptions().candidates == list(DEFAULT_CANDIDATES)
    assert set(DEFAULT_CANDIDATES) == set(REGISTRY) - {"auto"}
    assert "auto" not in BASELINE_NAMES
    with pytest.raises(ValidationError, match="did you mean 'tsv_m'"):
        parse_options("auto", {"candidates": ["tsvm"]})
    with pytest.raises(ValidationError, match="unknown candidate 'auto'"):
        parse_options("auto", {"candidates": ["auto", "ties"]})
    with pytest.raises(ValidationError, match="not among the candidates"):
        parse_options("auto", {"candidates": ["ties"], "candidate_options": {"calm": {}}})
    with pytest.raises(ValidationError, match="candidate_options.calm"):
        parse_options("auto", {"candidate_options": {"calm": {"epochs": -1}}})
    opts = parse_options("auto", {"candidates": ["calm"],
                                  "candidate_options": {"calm": {"num_sequential": 5}}})
    with pytest.raises(ValueError, match="candidate_options.calm.num_sequential"):
        opts.check_tasks(["a", "b", "c"])
    lines = AutoOptions().describe(["a", "b", "c"])
    assert len(lines) > len(DEFAULT_CANDIDATES) and lines[0].startswith("auto:")


def test_lr_search_progress_counts_epochs_of_the_whole_schedule() -> None:
    """Screening and the continued run both count against `epochs` (never "epoch 10/8")."""
    import re

    events: list[Progress] = []
    merge(_spec("calm", {**FAST_OPTIONS, "epochs": 10, "lr_grid": [0.3, 1.0, 3.0],
                         "lr_grid_extend": 0, "lr_screen": 0.2, "num_sequential": 1}),
          on_progress=events.append)
    counts = [tuple(map(int, m.groups())) for e in events
              if (m := re.search(r"epoch (\d+)/(\d+)", e.message))]
    assert counts and all(b == 10 and 1 <= a <= b for a, b in counts)
    assert any("screening lr" in e.message for e in events)
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions)
