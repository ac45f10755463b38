"""Fixtures for core/ tests: a migrated database (SQLite and PostgreSQL), a session,
a tenant, local storage and settings."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker
from svc_fixtures import migrated_db  # noqa: F401  (a fixture)
from worker_helpers import use_settings

from core.admin import create_tenant
from core.db import make_engine
from core.settings import Settings
from core.storage import LocalStorage


@pytest.fixture
def factory(migrated_db: str) -> Iterator[sessionmaker[Session]]:  # noqa: F811
    engine = make_engine(migrated_db)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


@pytest.fixture
def session(factory: sessionmaker[Session]) -> Iterator[Session]:
    with factory() as s:
        yield s


@pytest.fixture
def tenant(session: Session) -> str:
    tenant_id, _ = create_tenant(f"t-{uuid.uuid4().hex[:8]}", session=session)
    session.commit()
    return tenant_id


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage")


@pytest.fixture
def settings(migrated_db: str, tmp_path: Path) -> Settings:  # noqa: F811
    return Settings(database_url=migrated_db, storage_dir=tmp_path / "storage", progress_min_interval_s=60)


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """calm-service's settings (CALM_* variables) pointed at the test database and storage."""
    use_settings(
        monkeypatch, database_url=settings.database_url, storage_dir=settings.storage_dir,
        broker_url="filesystem://", broker_dir=settings.storage_dir.parent / "broker",
    )  # fmt: skip
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    yield
    monkeypatch.undo()
    use_settings(monkeypatch)  # caches re-read the restored environment
