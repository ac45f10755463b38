"""The API on the S3 backend (moto's standalone server): an upload is streamed to the bucket
and validated from the local copy; downloads stream from ranged GETs (206 / 416 / whole body
for several ranges); a delete removes the object."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from svc_fixtures import checkpoint_tensors, safetensors_bytes

from api.main import create_app
from core.admin import create_tenant
from core.db import migrate
from core.settings import Settings


@pytest.fixture
def s3_api(s3_endpoint: Any, tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str], Any]]:
    url = f"sqlite:///{tmp_path / 'calm.db'}"
    migrate(url)
    env = s3_endpoint.env(tmp_path / "cache")
    settings = Settings(database_url=url, broker_dir=tmp_path / "broker",
                        **{k.removeprefix("CALM_").lower(): v for k, v in env.items()})  # fmt: skip
    app = create_app(settings)
    with app.state.sessionmaker() as s:
        _, key = create_tenant(f"s3-{uuid.uuid4().hex[:6]}", session=s)
        s.commit()
    with TestClient(app) as client:
        yield client, {"Authorization": f"Bearer {key}"}, app.state.storage
    app.state.engine.dispose()


def test_upload_and_ranged_downloads_on_s3(s3_api: tuple[TestClient, dict[str, str], Any]) -> None:
    client, auth, storage = s3_api
    data = safetensors_bytes(checkpoint_tensors(width=64))
    r = client.post("/v1/files", params={"purpose": "checkpoint", "filename": "base.safetensors"},
                    content=data, headers=auth)  # fmt: skip
    assert r.status_code == 201, r.text
    f = r.json()
    assert f["status"] == "processed" and f["bytes"] == len(data)
    detail = client.get(f"/v1/files/{f['id']}", headers=auth).json()
    assert len(detail["tensors"]) == 5  # validated (header parsed) from the local copy
    key = next(b.key for b in storage.list("files"))
    assert storage.size(key) == len(data) and hasattr(storage, "client")  # in the bucket
    url = f"/v1/files/{f['id']}/content"

    whole = client.get(url, headers=auth)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["accept-ranges"] == "bytes"
    assert "base.safetensors" in whole.headers["content-disposition"]
    part = client.get(url, headers={**auth, "Range": "bytes=8-1031"})
    assert part.status_code == 206 and part.content == data[8:1032]
    assert part.headers["content-range"] == f"bytes 8-1031/{len(data)}"
    tail = client.get(url, headers={**auth, "Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    several = client.get(url, headers={**auth, "Range": "bytes=0-1,5-6"})
    assert several.status_code == 200 and several.content == data
    beyond = client.get(url, headers={**auth, "Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416 and beyond.json()["error"]["code"] == "range_not_satisfiable"
    stale = client.get(url, headers={**auth, "Range": "bytes=0-9", "If-Range": '"not-the-etag"'})
    assert stale.status_code == 200 and stale.content == data

    assert client.delete(f"/v1/files/{f['id']}", headers=auth).status_code == 204
    assert not storage.exists(key)
