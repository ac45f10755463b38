"""End-to-end fixtures: real processes (uvicorn API, Celery worker), real brokers, real DBs.

Every child process runs in its own session and is killed with its whole process group on
teardown; every wait is bounded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import ServeProcess, free_port, kill_group
from worker_helpers import ROOT, redis_test_url, tiny_suite


@pytest.fixture(scope="session")
def suite() -> Any:
    return tiny_suite()


@pytest.fixture
def redis_url() -> str:
    return redis_test_url()


@pytest.fixture
def child_env(tmp_path: Path) -> dict[str, str]:
    """The environment every child process gets: this interpreter's, CPU only, one thread."""
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("CALM_") and not k.startswith("CALM_TEST_")]:
        env.pop(key)
    env.update(CALM_WORKER_DEVICE="cpu", CALM_PROGRESS_MIN_INTERVAL_S="0.2",
               CALM_SSE_POLL_INTERVAL_S="0.1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(ROOT))  # fmt: skip
    return env


@pytest.fixture
def serve(tmp_path: Path, child_env: dict[str, str]) -> Iterator[ServeProcess]:
    """The embedded default, exactly as a user starts it: SQLite + filesystem broker."""
    svc = ServeProcess(tmp_path / "var", free_port(), child_env, tmp_path / "serve.log")
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.kill()


@pytest.fixture
def distributed(tmp_path: Path, child_env: dict[str, str], redis_url: str) -> Iterator[Any]:
    """Production topology on one machine: PostgreSQL (own database), the Redis broker, the API
    (uvicorn) and a Celery worker, each in its own process, sharing one storage folder."""
    from svc_fixtures import fresh_postgres_database

    from service.embedded import EmbeddedService

    with fresh_postgres_database() as db_url:
        env = {**child_env, "CALM_DATABASE_URL": db_url, "CALM_BROKER_URL": redis_url,
               "CALM_STORAGE_DIR": str(tmp_path / "shared-storage")}  # fmt: skip
        log = tmp_path / "services.log"
        svc = EmbeddedService(tmp_path / "dist", port=free_port(), log=log.open("w"), env=env)
        svc.log_path = log  # type: ignore[attr-defined]
        svc.database_url = db_url  # type: ignore[attr-defined]
        try:
            svc.start(timeout_s=120)
            yield svc
        finally:
            svc.stop()
            for proc in (svc.api, svc.worker):
                if proc is not None:
                    kill_group(proc.pid)
