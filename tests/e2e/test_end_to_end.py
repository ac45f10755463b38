"""THE end-to-end test: a real tiny CALM merge through HTTP -> broker -> a Celery worker in a
separate process -> database -> result download, checked BITWISE against `calm.merge` run
offline in this process on the same spec and seed.

Two topologies, the same code: production (PostgreSQL + Redis, API and worker as separate
processes) and the embedded default (`calm-service serve`: SQLite + filesystem broker).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import yaml
from e2e_helpers import ServeProcess, log_tail
from safetensors.torch import load_file
from sqlalchemy.orm import Session
from worker_helpers import ROOT, offline_merge, suite_spec

from client import CalmClient
from client.spec import job_body
from core.models import MergeJob

pytestmark = pytest.mark.timeout(600)
JOB_TIMEOUT_S = 300


def tensor_bytes(path: Path) -> tuple[dict[str, Any], dict[str, str], str]:
    """A safetensors file as (tensor table, metadata, sha256 of the tensor data): the CLI and the
    service write the same tensors byte for byte; the provenance metadata names their own spec
    (local paths vs file ids)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    return header, header.pop("__metadata__", {}), hashlib.sha256(raw[8 + n:]).hexdigest()


def check_range_and_resume(c: CalmClient, job_id: str, out: Path) -> None:
    """A Range request returns exactly that slice; an interrupted download resumes."""
    whole = out.read_bytes()
    r = c.http.get(f"/v1/merges/{job_id}/result", headers={"Range": "bytes=8-1031"})
    assert r.status_code == 206, r.text
    assert r.content == whole[8:1032]
    assert r.headers["content-range"] == f"bytes 8-1031/{len(whole)}"
    again = out.with_name("resumed.safetensors")
    again.with_name(again.name + ".part").write_bytes(whole[:5000])  # a broken-off download
    c.download_result(job_id, again)
    assert again.read_bytes() == whole


def merge_over_http(url: str, key: str, spec: dict[str, Any], out: Path, log: Path) -> dict[str, Any]:
    """With the Python client: uploads the spec's files, posts the job, polls it, downloads."""
    with CalmClient(url, key) as c:
        body = job_body(spec, lambda p, purpose: c.upload_file(p, purpose)["id"])
        job = c.create_merge(body)
        assert job["status"] == "queued", job
        job = c.wait(job["id"], timeout=JOB_TIMEOUT_S, poll_s=0.5)
        assert job["status"] == "succeeded", f"{job}\n{log_tail(log)}"
        c.download_result(job["id"], out)
        check_range_and_resume(c, job["id"], out)
        job["report"] = c.get_report(job["id"])
        job["events"] = c.events(job["id"], limit=500)["data"]
    return job


def merge_with_cli(url: str, key: str, spec: dict[str, Any], out: Path, env: dict[str, str],
                   log: Path) -> dict[str, Any]:  # fmt: skip
    """With `calm-client`: `merge create spec.yaml` (uploads, posts, watches the event
    stream, prints the report table), then `download`."""
    spec_path = out.parent / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    cli = [sys.executable, "-m", "client.cli", "--url", url, "--api-key", key, "-q"]
    made = subprocess.run([*cli, "merge", "create", str(spec_path)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=JOB_TIMEOUT_S)  # fmt: skip
    assert made.returncode == 0, f"{made.stdout}\n{made.stderr}\n{log_tail(log)}"
    job_id = re.search(r"created (merge-\S+)", made.stderr).group(1)
    assert "merged" in made.stdout and "average" in made.stdout  # the report table
    got = subprocess.run([*cli, "download", job_id, str(out)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert got.returncode == 0, got.stderr
    with CalmClient(url, key) as c:
        check_range_and_resume(c, job_id, out)
        job = c.get_merge(job_id)
        job["report"] = c.get_report(job_id)
        job["events"] = c.events(job_id, limit=500)["data"]
    return job


def assert_bitwise_equal_to_offline(downloaded: Path, spec: dict[str, Any], job: dict[str, Any]) -> None:
    from calm import save_result

    expected = offline_merge(spec)
    got = load_file(str(downloaded))
    assert got.keys() == expected.state_dict.keys()
    for name, tensor in expected.state_dict.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    with tempfile.TemporaryDirectory() as d:
        paths = save_result(expected, Path(d))
        table, meta, data = tensor_bytes(paths["merged"])
        got_table, got_meta, got_data = tensor_bytes(downloaded)
        assert (table, data) == (got_table, got_data), "same tensors, different file bytes"
    assert got_meta["method"] == meta["method"] == "calm" and got_meta["seed"] == str(spec["seed"])
    assert len(got_meta["spec_sha256"]) == 64 and got_meta["tasks"] == meta["tasks"]
    merged = job["report"]["table"]["merged"]
    for task, acc in expected.report["accuracy"]["merged"].items():
        assert merged[task] == pytest.approx(acc)


def test_distributed_postgres_redis_worker_process(distributed: Any, suite: Any, tmp_path: Path) -> None:
    from core.admin import create_tenant
    from core.db import make_engine

    engine = make_engine(distributed.database_url)
    with Session(engine) as session:
        _, key = create_tenant("e2e-distributed", session=session)
        session.commit()
    spec = suite_spec(suite)
    out = tmp_path / "merged.safetensors"
    job = merge_over_http(distributed.url, key, spec, out, distributed.log_path)
    assert distributed.failed() is None
    with Session(engine) as session:  # the merge ran in the worker process, not in this one
        worker_id = session.get(MergeJob, job["id"]).worker_id
    engine.dispose()
    assert worker_id and int(worker_id.rsplit(":", 1)[1]) != os.getpid()
    stages = [e["stage"] for e in job["events"]]
    assert "pseudo_labels" in stages and any(s and s.startswith("mask:") for s in stages)
    assert_bitwise_equal_to_offline(out, spec, job)


def test_embedded_calm_service_serve(serve: ServeProcess, suite: Any, tmp_path: Path,
                                     child_env: dict[str, str]) -> None:  # fmt: skip
    data_dir = tmp_path / "var"
    made = subprocess.run(
        [sys.executable, "-m", "service.cli", "--data-dir", str(data_dir), "create-tenant", "e2e"],
        env=child_env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = re.search(r"API key \(shown once, store it now\): (\S+)", made.stdout).group(1)
    spec = suite_spec(suite, seed=3)
    out = tmp_path / "merged.safetensors"
    job = merge_with_cli(serve.url, key, spec, out, child_env, serve.log)
    assert (data_dir / "calm.db").is_file() and (data_dir / "broker" / "queue").is_dir()
    assert list((data_dir / "storage" / "results").iterdir())[0].name == job["id"]
    assert_bitwise_equal_to_offline(out, spec, job)

    # Ctrl-C stops the API and the worker cleanly.
    serve.proc.send_signal(signal.SIGINT)
    assert serve.proc.wait(timeout=60) == 0, log_tail(serve.log)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{serve.url}/healthz", timeout=2)
    for pid in serve.children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
