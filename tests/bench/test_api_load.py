"""bench.api_load runs end to end on a small scale and writes the keys the issue names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import api_load

pytestmark = pytest.mark.timeout(300)


def test_api_load_small_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "api_load.json"
    args = ["--mb", "4", "--clients", "2", "--rounds", "1", "--pollers", "1", "--repeats", "1",
            "--max-polls", "20", "--out", str(out)]  # fmt: skip
    assert api_load.main(args) == 0  # no errors
    r = json.loads(out.read_text())
    assert set(r["latency"]) >= {"upload", "download", "list_files", "list_jobs", "get_job", "job_events"}
    assert all(v["p99_ms"] >= v["p50_ms"] > 0 for v in r["latency"].values())
    assert set(r["rss_mb"]) == {"before", "peak", "after"} and r["rss_mb"]["peak"] >= r["rss_mb"]["before"]
    assert set(r["throughput_ratio"]) == {"upload", "download"} and r["errors"] == 0
    assert all(v > 0 for v in r["raw_mb_s"].values()) and all(v > 0 for v in r["api_mb_s"].values())
    assert "p99 ms" in capsys.readouterr().out
