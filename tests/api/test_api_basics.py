"""Health, readiness, OpenAPI, auth and the error format; the API process never imports torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from svc_api import Service

from api.main import create_app
from core.admin import revoke_api_key
from core.models import ApiKey
from core.settings import Settings


def test_health_and_readiness(service: Service) -> None:
    assert service.client.get("/healthz").json() == {"status": "ok"}
    r = service.client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


def test_readyz_is_503_when_the_broker_is_down(service: Service) -> None:
    app = create_app(service.settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))
    with TestClient(app) as client:  # nothing listens on port 1
        r = client.get("/readyz")
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "not_ready" and error["details"]["broker"] == "unreachable"


def test_readyz_is_503_when_the_database_is_down(service: Service) -> None:
    app = create_app(
        service.settings.model_copy(update={"database_url": "postgresql+psycopg://x@127.0.0.1:1/x"})
    )
    with TestClient(app) as client:
        r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["error"]["details"]["database"] == "unreachable"


def test_openapi_and_docs_are_served(service: Service) -> None:
    spec = service.client.get("/openapi.json").json()
    assert {"/v1/files", "/v1/merges", "/v1/merges/{job_id}/events/stream"} <= set(spec["paths"])
    upload = spec["paths"]["/v1/files"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/octet-stream"} <= set(upload)
    assert service.client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer calm_nope"}, {"Authorization": "Basic dXNlcjpwYXNz"}]
)
def test_bad_or_missing_keys_are_401(service: Service, headers: dict[str, str]) -> None:
    r = service.client.get("/v1/files", headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.headers["www-authenticate"] == "Bearer"


def test_revoked_key_is_401(service: Service) -> None:
    assert service.client.get("/v1/merges", headers=service.auth()).status_code == 200
    with service.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        key = session.query(ApiKey).filter_by(tenant_id=service.tenants["a"]).one()
        revoke_api_key(session, key.id)
        session.commit()
    assert service.client.get("/v1/merges", headers=service.auth()).status_code == 401


def test_errors_are_json_with_codes(service: Service) -> None:
    r = service.client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = service.client.post("/v1/merges", headers=service.auth(), content=b"{not json")
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = service.client.get("/v1/merges?limit=0", headers=service.auth())
    assert r.status_code == 422 and "limit" in r.json()["error"]["message"]


def test_the_api_never_imports_torch() -> None:
    code = "import sys, api.main; api.main.create_app(); import core.jobs; assert 'torch' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_bootstrap_migrates_and_creates_the_key(tmp_path: Path) -> None:
    """The embedded server's start: auto_migrate on an empty SQLite file, a bootstrap key."""
    key = "calm_bootstrap_key_for_tests_0123456789"
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'fresh' / 'calm.db'}",
        storage_dir=tmp_path / "storage",
        auto_migrate=True,
        bootstrap_api_key=key,
    )
    for _ in range(2):  # idempotent across restarts
        with TestClient(create_app(settings)) as client:
            r = client.get("/v1/merges", headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200 and r.json()["data"] == []
