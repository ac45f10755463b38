"""Scale-out on the production topology (PostgreSQL + Redis + S3-compatible storage, no shared
folder), two Celery workers in separate processes:

1. several jobs: each runs exactly once, on either worker, with the offline library's result;
2. kill -9 of the pool process running a job: the job is retried on the other worker as
   attempt 2 and succeeds (the recovery time is printed);
3. SIGTERM on the worker running a job: the job is handed back and finishes on the other one.
"""

from __future__ import annotations

import hashlib
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_helpers import Cluster, pid_of, wait_for
from worker_helpers import ROOT, offline_merge, redis_test_url, suite_spec

from client import CalmClient
from client.spec import job_body

pytestmark = pytest.mark.timeout(600)
QUICK = {"options": {"epochs": 1, "lr_grid": [1.0], "batch_size": 32}, "evaluate": False}
LONG = {"options": {"epochs": 20, "lr_grid": [1.0], "batch_size": 32}, "evaluate": False}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: Any) -> Iterator[Cluster]:
    import redis
    from sqlalchemy.orm import Session
    from svc_fixtures import fresh_postgres_database

    from core.admin import create_tenant
    from core.db import make_engine, migrate
    from core.queue import MERGE_QUEUE

    root = tmp_path_factory.mktemp("cluster")
    redis_url = redis_test_url()
    redis.Redis.from_url(redis_url).delete(MERGE_QUEUE)  # no other test's messages
    # grace 0: SIGTERM hands a running job back at once (a short job can finish within 1 s)
    with fresh_postgres_database() as db_url:
        migrate(db_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALM_") or k.startswith("CALM_TEST_")}
        env.update(s3_endpoint.env(root / "unused-cache"), CALM_DATABASE_URL=db_url,
                   CALM_BROKER_URL=redis_url, CALM_WORKER_DEVICE="cpu",
                   CALM_PROGRESS_MIN_INTERVAL_S="0.2", CALM_WORKER_SHUTDOWN_GRACE_S="0",
                   OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))  # fmt: skip
        c = Cluster(root, env)
        engine = make_engine(db_url)
        with Session(engine) as s:
            _, c.key = create_tenant(f"scale-{uuid.uuid4().hex[:6]}", session=s)
            s.commit()
        engine.dispose()
        try:
            c.start_api()
            c.start_worker("w1")
            c.start_worker("w2")
            yield c
        finally:
            c.stop()


@pytest.fixture(scope="module")
def uploaded(cluster: Cluster, suite: Any) -> dict[str, str]:
    """path -> file id: the suite's files, uploaded once and shared by every job."""
    ids: dict[str, str] = {}
    with CalmClient(cluster.url, cluster.key) as c:
        for path, purpose in suite_files(suite):
            ids[str(path)] = c.upload_file(path, purpose)["id"]
    return ids


def suite_files(suite: Any) -> list[tuple[Path, str]]:
    files: list[tuple[Path, str]] = []
    job_body(suite_spec(suite), lambda p, purpose: files.append((Path(p), purpose)) or "x")
    return list(dict.fromkeys(files))


def submit(cluster: Cluster, suite: Any, ids: dict[str, str], **spec: Any) -> tuple[str, dict[str, Any]]:
    local = suite_spec(suite, **spec)
    with CalmClient(cluster.url, cluster.key) as c:
        job = c.create_merge(job_body(local, lambda p, _purpose: ids[str(p)]))
    return job["id"], local


def sha256(path: Path) -> str:
    """Digest of a safetensors file's tensors (names, dtypes, shapes, bytes) — not of its
    metadata, which records where the spec came from (file ids vs local paths)."""
    import torch
    from safetensors.torch import load_file

    h = hashlib.sha256()
    for name, t in sorted(load_file(str(path)).items()):
        h.update(f"{name}:{t.dtype}:{list(t.shape)}".encode())
        h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def offline_sha(spec: dict[str, Any]) -> str:
    """The offline library's merged checkpoint, on one thread as the workers run (a long mask
    optimisation is bitwise reproducible for a given thread count)."""
    import torch

    from calm import save_result

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as d:
            return sha256(save_result(offline_merge(spec), Path(d))["merged"])
    finally:
        torch.set_num_threads(threads)


def claims(events: list[dict[str, Any]]) -> list[str]:
    return [e["message"] for e in events if " claimed by " in e["message"]]


def finished(cluster: Cluster, job_id: str) -> dict[str, Any] | None:
    with CalmClient(cluster.url, cluster.key) as c:
        job = c.get_merge(job_id)
    return job if job["status"] in ("succeeded", "failed", "cancelled") else None


def running_mask_stage(cluster: Cluster, job_id: str) -> dict[str, Any] | None:
    with CalmClient(cluster.url, cluster.key) as c:
        job = c.get_merge(job_id)
    return job if job["status"] == "running" and (job["stage"] or "").startswith("mask:") else None


def test_jobs_spread_over_two_workers_each_run_once(cluster: Cluster, suite: Any, uploaded: dict[str, str],
                                                    tmp_path: Path) -> None:  # fmt: skip
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from core.models import MergeJob

    submitted = [submit(cluster, suite, uploaded, seed=seed, **QUICK) for seed in (3, 4) * 3]
    expected = {spec["seed"]: offline_sha(spec) for _, spec in submitted[:2]}
    with CalmClient(cluster.url, cluster.key) as c:
        for job_id, spec in submitted:
            job = c.wait(job_id, timeout=300, poll_s=0.5)
            assert job["status"] == "succeeded", f"{job}\n{cluster.logs()}"
            assert (job["attempt"], job["max_attempts"]) == (1, 2)
            assert len(claims(c.events(job_id, limit=500)["data"])) == 1  # ran exactly once
            out = c.download_result(job_id, tmp_path / f"{job_id}.safetensors")  # streamed from S3
            assert sha256(out) == expected[spec["seed"]], "not the offline library's result"
    engine = create_engine(cluster.env["CALM_DATABASE_URL"])
    with Session(engine) as s:
        owners = s.scalars(select(MergeJob.worker_id).where(MergeJob.id.in_([j for j, _ in submitted]))).all()
    engine.dispose()
    pools = {w.name: set(w.pool_pids()) for w in cluster.workers}
    by_worker = {name for name, pids in pools.items() for owner in owners if pid_of(owner) in pids}
    assert by_worker == {"w1", "w2"}, f"one worker did all the jobs: {owners} {pools}"
    for w in cluster.workers:  # the workers downloaded inputs into their own caches
        assert any((cluster.root / f"{w.name}-cache" / "blobs" / "files").rglob("*.safetensors"))


def test_kill_9_of_a_pool_process_retries_on_the_other_worker(cluster: Cluster, suite: Any,
                                                              uploaded: dict[str, str]) -> None:  # fmt: skip
    job_id, spec = submit(cluster, suite, uploaded, seed=5, **LONG)
    job = wait_for(lambda: running_mask_stage(cluster, job_id), 240, "the mask stage")
    with CalmClient(cluster.url, cluster.key) as c:
        worker_id = next(m for m in claims(c.events(job_id)["data"])).rsplit(" ", 1)[1]
    victim = pid_of(worker_id)
    owner = cluster.worker_of_pid(victim)
    assert owner is not None and job["attempt"] == 1
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    retried = wait_for(lambda: (j := running_mask_stage(cluster, job_id)) and j["attempt"] == 2 and j, 120,
                       "attempt 2")  # fmt: skip
    reclaimed_s = time.monotonic() - killed_at
    job = wait_for(lambda: finished(cluster, job_id), 300, "the retry to finish")
    done_s = time.monotonic() - killed_at
    assert job["status"] == "succeeded" and job["attempt"] == 2, f"{job}\n{cluster.logs()}"
    with CalmClient(cluster.url, cluster.key) as c:
        events = c.events(job_id, limit=500)["data"]
    lost = [e["message"] for e in events if "attempt 1 of 2 lost" in e["message"]]
    assert lost and "worker process died" in lost[0] and len(claims(events)) == 2
    second = pid_of(claims(events)[1].rsplit(" ", 1)[1])
    assert second != victim and cluster.worker_of_pid(second) not in (None, owner), cluster.logs()
    print(f"\nkill -9 recovery: re-claimed as attempt 2 after {reclaimed_s:.1f} s, succeeded "
          f"{done_s:.1f} s after the kill (stale_job_after_s 900)")  # fmt: skip
    assert retried and reclaimed_s < 30
    with CalmClient(cluster.url, cluster.key) as c, tempfile.TemporaryDirectory() as d:
        assert sha256(c.download_result(job_id, Path(d) / "m.safetensors")) == offline_sha(spec)


def test_sigterm_hands_the_job_back(cluster: Cluster, suite: Any, uploaded: dict[str, str]) -> None:
    job_id, _ = submit(cluster, suite, uploaded, seed=6, **LONG)
    wait_for(lambda: running_mask_stage(cluster, job_id), 240, "the mask stage")
    with CalmClient(cluster.url, cluster.key) as c:
        first = pid_of(claims(c.events(job_id)["data"])[-1].rsplit(" ", 1)[1])
    owner = cluster.worker_of_pid(first)
    assert owner is not None
    owner.proc.send_signal(signal.SIGTERM)  # docker stop / a deploy
    assert owner.proc.wait(timeout=60) == 0, cluster.logs()
    job = wait_for(lambda: finished(cluster, job_id), 300, "the job to finish elsewhere")
    assert job["status"] == "succeeded" and job["attempt"] == 1, f"{job}\n{cluster.logs()}"  # not counted
    with CalmClient(cluster.url, cluster.key) as c:
        events = c.events(job_id, limit=500)["data"]
    messages = [e["message"] for e in events]
    assert any("handed back during attempt 1" in m for m in messages), "\n".join(messages)
    assert len(claims(events)) == 2 and pid_of(claims(events)[1].rsplit(" ", 1)[1]) != first
