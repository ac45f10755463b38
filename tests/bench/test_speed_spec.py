"""bench.merge_speed's job specs stay valid requests of the one spec schema (the benchmark is
too slow for the suite; its specs are not)."""

from __future__ import annotations

from pathlib import Path

from bench.speed_fixtures import Fixture, job_spec
from calm import MergeRequest


def test_speed_job_specs_are_merge_requests(tmp_path: Path) -> None:
    fx = Fixture(tmp_path, "ViT-B-32", None, 112, 8, 16, 64, 0)
    for kw in ({}, {"device": "cuda", "precision": "bf16", "micro_batch_size": 16, "data": "large"}):
        spec = MergeRequest.model_validate(job_spec(fx, 2, {"epochs": 1}, **kw))
        assert [t.name for t in spec.tasks] == ["task0", "task1"]
        assert spec.run.device == kw.get("device", "cpu")
        assert spec.run.micro_batch_size == kw.get("micro_batch_size", "auto")
