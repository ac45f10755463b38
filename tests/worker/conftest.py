"""Worker fixtures: the real task over a real migrated database (SQLite, and PostgreSQL when
CALM_TEST_POSTGRES_URL is set), real local storage and the tiny digits suite's files."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from svc_fixtures import DB_KINDS, fresh_database
from worker_helpers import WorkerEnv, redis_test_url, tiny_suite, use_settings

from core.admin import create_tenant
from core.db import get_engine, migrate, session_scope
from core.settings import get_settings
from core.storage import LocalStorage


@pytest.fixture(scope="session")
def suite() -> Any:
    return tiny_suite()


@pytest.fixture(params=DB_KINDS)
def worker_env(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suite: Any
) -> Iterator[WorkerEnv]:
    with fresh_database(request.param, tmp_path) as url:
        migrate(url)
        use_settings(
            monkeypatch, database_url=url, storage_dir=tmp_path / "storage",
            broker_dir=tmp_path / "broker", worker_device="cpu", progress_min_interval_s=0,
        )  # fmt: skip
        settings = get_settings()
        with session_scope() as s:
            tenant, _ = create_tenant(f"w-{uuid.uuid4().hex[:8]}", session=s)
        try:
            yield WorkerEnv(settings, LocalStorage(settings.storage_dir), tenant, suite)
        finally:
            get_engine().dispose()
            use_settings(monkeypatch)


@pytest.fixture
def redis_url() -> str:
    return redis_test_url()
