"""Alembic: upgrade head / downgrade base on SQLite and PostgreSQL, and the ORM models agree
with the migrated schema (autogenerate finds no difference)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from svc_fixtures import DB_KINDS, fresh_database

from core.db import alembic_config, make_engine, migrate
from core.models import Base

ROOT = Path(__file__).resolve().parents[2]
TABLES = {"tenants", "api_keys", "files", "merge_jobs", "merge_job_files"}
TABLES |= {"job_events", "masks", "evaluations", "uploads", "upload_parts"}


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def differences(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            opts = {"compare_type": True, "compare_server_default": True}
            ctx = MigrationContext.configure(conn, opts=opts)
            return compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", DB_KINDS)
def test_upgrade_matches_models_and_downgrade_is_clean(kind: str, tmp_path: Path) -> None:
    with fresh_database(kind, tmp_path) as url:
        migrate(url)
        assert tables(url) == TABLES
        assert differences(url) == []
        command.downgrade(alembic_config(url), "base")
        assert tables(url) == set()
        migrate(url)  # and back up again
        assert tables(url) == TABLES


def test_alembic_cli_uses_the_settings_url(tmp_path: Path) -> None:
    """`alembic upgrade head` from the repository root, URL from CALM_DATABASE_URL."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {**os.environ, "CALM_DATABASE_URL": url}
    for args in (["upgrade", "head"], ["current"]):
        cmd = [sys.executable, "-m", "alembic", *args]
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    assert tables(url) == TABLES
