"""Helpers for the worker and end-to-end tests: the tiny digits suite (built once, cached),
fast CALM options, pointing this process's settings at a test database, and submitting a
suite job through core (as the API does, without HTTP)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[1]
SUITE_CACHE = Path(os.environ.get("CALM_SUITE_CACHE", ROOT / "bench" / "cache"))
# Library defaults except fewer epochs, one relative lr and batches smaller than a task's
# unlabeled set (so the seed decides the batches): seconds on a CPU.
FAST_OPTIONS: dict[str, Any] = {"epochs": 3, "lr_grid": [1.0], "batch_size": 32}
SEED = 11


def tiny_suite() -> Any:
    """bench.digits_suite's "test" suite (minutes to build the first time, then cached)."""
    from bench.digits_suite import build_suite

    return build_suite("test", cache_dir=SUITE_CACHE, verbose=False)


def suite_spec(suite: Any, **overrides: Any) -> dict[str, Any]:
    """A MergeSpec dict (local paths) for the suite with fast options."""
    kw: dict[str, Any] = {"seed": SEED, **overrides}
    options = kw.pop("options", FAST_OPTIONS)
    return suite.merge_spec("calm", options=options, **kw)


def offline_merge(spec: dict[str, Any]) -> Any:
    """calm.merge in this process, on the CPU, exactly as a worker runs it."""
    import calm
    from calm.spec import MergeRequest

    return calm.merge(MergeRequest.model_validate(spec), run=calm.RunOptions(device="cpu"))


def use_settings(monkeypatch: pytest.MonkeyPatch, **values: Any) -> None:
    """Sets CALM_* variables and resets every cache that read the old ones (settings,
    engines, queue clients), so module-level helpers see the test's database."""
    from core import db, queue
    from core.settings import get_settings

    for key, value in values.items():
        monkeypatch.setenv(f"CALM_{key.upper()}", str(value))
    get_settings.cache_clear()
    db.get_engine.cache_clear()
    db.get_sessionmaker.cache_clear()
    queue._client_for.cache_clear()


def submit_job(session: Session, storage: Any, settings: Any, tenant: str, spec: dict[str, Any]) -> str:
    """Stores + validates the spec's files and creates the job as the API would; returns its id."""
    from svc_fixtures import store_file

    from client.spec import job_body
    from core import jobs
    from core.job_request import JobCreate

    def upload(path: Path, purpose: str) -> str:
        return store_file(session, storage, settings, tenant, purpose, path.name, path.read_bytes()).id

    body = JobCreate.model_validate(job_body(spec, upload))
    job, created = jobs.create_job(session, tenant, body, settings=settings)
    assert created and job.status == "queued"
    return job.id


def rewrite_request(job_id: str, **changes: Any) -> None:
    """Change a queued job's stored request behind the API's back (as a job queued by an
    older API version would look) — for tests of the worker's own checks."""
    from core.db import session_scope
    from core.models import MergeJob

    with session_scope() as s:
        job = s.get(MergeJob, job_id)
        job.request = {**job.request, **changes}


@dataclass
class WorkerEnv:
    settings: Any  # core.settings.Settings
    storage: Any  # core.storage.LocalStorage
    tenant: str
    suite: Any

    def submit(self, **spec_overrides: Any) -> str:
        from core.db import session_scope

        with session_scope() as s:
            return submit_job(s, self.storage, self.settings, self.tenant,
                              suite_spec(self.suite, **spec_overrides))  # fmt: skip


def redis_test_url() -> str:
    """CALM_TEST_REDIS_URL after a PING; skip when unset or down (fail when `CI` is set)."""
    import redis

    url = os.environ.get("CALM_TEST_REDIS_URL")
    ci = bool(os.environ.get("CI"))
    if not url:
        (pytest.fail if ci else pytest.skip)("CALM_TEST_REDIS_URL is not set")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except Exception as e:  # refused, DNS, auth
        (pytest.fail if ci else pytest.skip)(f"Redis at CALM_TEST_REDIS_URL is unreachable: {e}")
    return url
