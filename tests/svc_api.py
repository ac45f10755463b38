"""API test fixtures: the real app over a real database (SQLite with the embedded filesystem broker;
PostgreSQL with Redis when CALM_TEST_REDIS_URL is given), two tenants, upload helpers."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from svc_fixtures import checkpoint_tensors, dataset_bytes, merge_body, migrated_db, safetensors_bytes  # noqa: F401

from api.main import create_app
from core.admin import create_tenant
from core.queue import MERGE_QUEUE
from core.settings import Settings, get_settings
from core.storage import LocalStorage


@dataclass
class Service:
    client: TestClient
    settings: Settings
    storage: LocalStorage
    keys: dict[str, str] = field(default_factory=dict)  # "a"/"b" -> API key
    tenants: dict[str, str] = field(default_factory=dict)

    def auth(self, who: str = "a") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def upload(self, purpose: str, filename: str, data: bytes, who: str = "a") -> httpx.Response:
        return self.client.post(
            "/v1/files", headers=self.auth(who), data={"purpose": purpose}, files={"file": (filename, data)}
        )

    def file_id(self, purpose: str, filename: str, data: bytes, who: str = "a") -> str:
        r = self.upload(purpose, filename, data, who)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def merge_inputs(self, who: str = "a", n_tasks: int = 2) -> dict[str, Any]:
        ck, data = safetensors_bytes(checkpoint_tensors()), dataset_bytes()
        return {
            "base": self.file_id("checkpoint", "base.safetensors", ck, who),
            "checkpoints": [self.file_id("checkpoint", f"t{i}.safetensors", ck, who) for i in range(n_tasks)],
            "datasets": [self.file_id("dataset", f"d{i}.safetensors", data, who) for i in range(n_tasks)],
        }

    def body(self, ids: dict[str, Any], **overrides: Any) -> dict[str, Any]:
        return merge_body(ids["base"], ids["checkpoints"], ids["datasets"], **overrides)

    def create(self, body: dict[str, Any], who: str = "a", key: str | None = None) -> httpx.Response:
        headers = self.auth(who) | ({"Idempotency-Key": key} if key else {})
        return self.client.post("/v1/merges", headers=headers, json=body)

    def queued_job_ids(self) -> list[str]:
        """Job ids of the merge messages sitting in the real broker."""
        messages: list[bytes] = []
        if self.settings.broker_url.startswith("redis"):
            import redis

            messages = redis.Redis.from_url(self.settings.broker_url).lrange(MERGE_QUEUE, 0, -1)
        else:
            messages = [p.read_bytes() for p in (Path(self.settings.broker_dir) / "queue").glob("*.msg")]
        ids = []
        for raw in messages:
            msg = json.loads(raw)
            if msg["headers"]["task"] == "calm.run_merge":
                ids.append(json.loads(base64.b64decode(msg["body"]))[0][0])
        return ids

    def stored_files(self) -> list[Path]:
        return [p for p in self.storage.root.rglob("*") if p.is_file()]


def _broker(db_url: str, tmp_path: Path) -> str:
    """PostgreSQL runs use the real Redis broker (checked with a PING; a missing or unreachable
    Redis fails under CI instead of silently falling back); SQLite runs the embedded broker."""
    if db_url.startswith("postgresql") and (os.environ.get("CALM_TEST_REDIS_URL") or os.environ.get("CI")):
        from worker_helpers import redis_test_url

        return redis_test_url()
    return "filesystem://"


@pytest.fixture
def service(migrated_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:  # noqa: F811
    env = {
        "CALM_DATABASE_URL": migrated_db,
        "CALM_STORAGE_DIR": str(tmp_path / "storage"),
        "CALM_BROKER_URL": _broker(migrated_db, tmp_path),
        "CALM_BROKER_DIR": str(tmp_path / "broker"),
        "CALM_SSE_POLL_INTERVAL_S": "0.05",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()  # core.queue reads the process settings
    settings = get_settings()
    app = create_app(settings)
    svc = Service(TestClient(app), settings, app.state.storage)
    with app.state.sessionmaker() as session:
        for who in ("a", "b"):
            svc.tenants[who], svc.keys[who] = create_tenant(f"{who}-{uuid.uuid4().hex[:8]}", session=session)
        session.commit()
    with svc.client:
        yield svc
    _drain_redis(svc)
    get_settings.cache_clear()


def _drain_redis(svc: Service) -> None:
    """Removes this test's messages from a shared Redis queue (nobody will run them)."""
    if not svc.settings.broker_url.startswith("redis"):
        return
    import redis

    from core.models import MergeJob

    with svc.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        mine = set(session.scalars(select(MergeJob.id).where(MergeJob.tenant_id.in_(svc.tenants.values()))))
    r = redis.Redis.from_url(svc.settings.broker_url)
    for raw in r.lrange(MERGE_QUEUE, 0, -1):
        if json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0] in mine:
            r.lrem(MERGE_QUEUE, 1, raw)
