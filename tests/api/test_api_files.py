"""/v1/files: streamed uploads (multipart and raw), validation with nothing left behind,
listing, download with Range, deletion, tenancy."""

from __future__ import annotations

import asyncio
import hashlib
import pickle
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from svc_api import Service
from svc_fixtures import checkpoint_tensors, safetensors_bytes, zip_bytes

from api.main import create_app
from core.models import FileObject

CKPT = safetensors_bytes(checkpoint_tensors())


def rows(service: Service) -> list[FileObject]:
    with service.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        return session.query(FileObject).filter(FileObject.tenant_id.in_(service.tenants.values())).all()


def test_multipart_upload_get_and_download(service: Service) -> None:
    r = service.upload("checkpoint", "base.safetensors", CKPT)
    assert r.status_code == 201, r.text
    f = r.json()
    assert f["id"].startswith("file-") and f["status"] == "processed" and f["format"] == "safetensors"
    assert (f["bytes"], f["sha256"]) == (len(CKPT), hashlib.sha256(CKPT).hexdigest())
    assert f["tensors"]["visual.proj"] == {"dtype": "F32", "shape": [16, 32]}
    got = service.client.get(f"/v1/files/{f['id']}", headers=service.auth()).json()
    assert got["metadata"]["num_tensors"] == 5 and got["tensors"] == f["tensors"]
    body = service.client.get(f"/v1/files/{f['id']}/content", headers=service.auth())
    assert body.status_code == 200 and body.content == CKPT


def test_range_downloads(service: Service) -> None:
    fid = service.file_id("checkpoint", "base.safetensors", CKPT)
    url, size = f"/v1/files/{fid}/content", len(CKPT)
    r = service.client.get(url, headers=service.auth() | {"Range": "bytes=8-15"})
    assert r.status_code == 206 and r.content == CKPT[8:16]
    assert r.headers["content-range"] == f"bytes 8-15/{size}"
    r = service.client.get(url, headers=service.auth() | {"Range": "bytes=-10"})
    assert r.status_code == 206 and r.content == CKPT[-10:]
    r = service.client.get(url, headers=service.auth() | {"Range": f"bytes={size}-"})
    assert r.status_code == 416 and r.json()["error"]["code"] == "range_not_satisfiable"
    assert r.headers["content-range"] == f"bytes */{size}"
    r = service.client.get(url, headers=service.auth() | {"Range": "pages=1-2"})  # unknown unit: ignored
    assert r.status_code == 200 and r.content == CKPT


@pytest.mark.parametrize(("header", "status", "content_range"), [
    ("bytes=5-4", 200, None),  # invalid (RFC 9110 §14.1.1): ignored, never a plain-text 400
    ("bytes=0-1,5-3", 200, None),
    ("bytes=0-1,x", 200, None),
    ("bytes=" + ",".join(["0-1"] * 101), 200, None),  # too many ranges: ignored
    ("bytes=0-1,99999-", 206, "bytes 0-1/{size}"),  # the satisfiable range is served
    ("bytes=0-" + "9" * 400, 206, "bytes 0-{last}/{size}"),
    ("bytes=" + "9" * 400 + "-", 416, "bytes */{size}"),
    ("bytes=-0", 416, "bytes */{size}"),
])  # fmt: skip
def test_odd_range_headers_keep_the_contract(
    service: Service, header: str, status: int, content_range: str | None
) -> None:
    """Starlette's FileResponse serves what is left: a satisfiable, well-formed header."""
    fid = service.file_id("checkpoint", "base.safetensors", CKPT)
    r = service.client.get(f"/v1/files/{fid}/content", headers=service.auth() | {"Range": header})
    size = len(CKPT)
    assert r.status_code == status
    expected = content_range.format(size=size, last=size - 1) if content_range else None
    assert r.headers.get("content-range") == expected
    if status == 416:
        assert r.json()["error"]["code"] == "range_not_satisfiable"
    elif status == 200:
        assert r.content == CKPT


def chunked_multipart(purpose: str, filename: str, data: bytes, chunk: int) -> tuple[Iterator[bytes], str]:
    boundary = "----calm-test-boundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + data
    body += (
        f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'.encode()
    )
    body += f"--{boundary}--\r\n".encode()
    return (
        body[i : i + chunk] for i in range(0, len(body), chunk)
    ), f"multipart/form-data; boundary={boundary}"


def asgi_post(service: Service, url: str, chunks: Iterator[bytes], headers: dict[str, str]) -> httpx.Response:
    """POST through httpx's ASGI transport, which hands the app one body message per chunk
    (the TestClient would join them), so incremental parsing is really exercised."""
    app = service.client.app

    async def body() -> AsyncIterator[bytes]:
        for c in chunks:
            yield c

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.post(url, headers=headers, content=body())

    return asyncio.run(go())


def test_multipart_is_parsed_incrementally_across_tiny_chunks(service: Service) -> None:
    """Purpose after the file, boundaries split across 7-byte body messages."""
    chunks, ctype = chunked_multipart("checkpoint", "m.safetensors", CKPT, 7)
    r = asgi_post(service, "/v1/files", chunks, service.auth() | {"Content-Type": ctype})
    assert r.status_code == 201, r.text
    assert r.json()["sha256"] == hashlib.sha256(CKPT).hexdigest() and r.json()["bytes"] == len(CKPT)


def test_raw_body_upload(service: Service) -> None:
    data = zip_bytes(["a/1.png", "a/2.jpg"])
    r = service.client.post(
        "/v1/files?purpose=dataset&filename=images.zip",
        headers=service.auth() | {"Content-Type": "application/octet-stream"},
        content=iter([data[:10], data[10:]]),
    )
    assert r.status_code == 201, r.text
    assert (r.json()["format"], r.json()["metadata"]) == ("zip", {"images": 2})


@pytest.mark.parametrize(
    ("purpose", "filename", "data", "status", "code"),
    [
        ("checkpoint", "model.pt", pickle.dumps({"w": 1}), 400, "unsupported_checkpoint_format"),
        ("checkpoint", "model.safetensors", pickle.dumps({"w": 1}), 400, "unsupported_checkpoint_format"),
        (
            "checkpoint",
            "model.safetensors",
            b"\x10\x00\x00\x00\x00\x00\x00\x00{bad",
            400,
            "invalid_safetensors",
        ),
        ("dataset", "d.zip", zip_bytes(["../../etc/x.png"]), 400, "unsafe_archive"),
        ("head", "h.safetensors", CKPT, 400, "invalid_head"),
        ("checkpoint", "images.zip", zip_bytes(["a.png"]), 400, "unsupported_file_type"),
        ("weights", "m.safetensors", CKPT, 422, "invalid_request"),
    ],
)
def test_invalid_uploads_leave_nothing_behind(
    service: Service, purpose: str, filename: str, data: bytes, status: int, code: str
) -> None:
    r = service.upload(purpose, filename, data)
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text
    assert rows(service) == [] and service.stored_files() == []


def test_upload_size_cap_is_413_mid_stream(service: Service) -> None:
    app = create_app(service.settings.model_copy(update={"max_upload_bytes": 100}))
    with TestClient(app) as client:
        chunks, ctype = chunked_multipart("checkpoint", "m.safetensors", CKPT, 64)  # no Content-Length
        svc = Service(client, service.settings, service.storage)
        r = asgi_post(svc, "/v1/files", chunks, service.auth() | {"Content-Type": ctype})
        assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"
        r = client.post(
            "/v1/files?purpose=checkpoint&filename=m.safetensors", headers=service.auth(), content=CKPT
        )  # declared Content-Length over the cap: refused before reading
        assert r.status_code == 413
    assert rows(service) == [] and service.stored_files() == []


def test_malformed_multipart_requests(service: Service) -> None:
    r = service.client.post("/v1/files", headers=service.auth(), data={"purpose": "checkpoint"}, files={})
    assert r.status_code == 422
    r = service.client.post("/v1/files?purpose=checkpoint", headers=service.auth(), content=CKPT)
    assert r.status_code == 422 and "filename" in r.json()["error"]["message"]  # raw body without a name
    assert service.stored_files() == []


def test_list_pagination_and_purpose_filter(service: Service) -> None:
    ids = [service.file_id("checkpoint", f"c{i}.safetensors", CKPT) for i in range(5)]
    service.file_id("dataset", "d.zip", zip_bytes(["a.png"]))
    seen, after = [], None
    while True:
        page = service.client.get(
            "/v1/files",
            headers=service.auth(),
            params={"limit": 2, "purpose": "checkpoint"} | ({"after": after} if after else {}),
        ).json()
        seen += [f["id"] for f in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        after = page["next_cursor"]
    assert seen == ids[::-1]  # newest first, each once
    r = service.client.get("/v1/files", headers=service.auth(), params={"after": "file-nope"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_cursor"


def test_delete(service: Service) -> None:
    fid = service.file_id("checkpoint", "c.safetensors", CKPT)
    assert len(service.stored_files()) == 1
    assert service.client.delete(f"/v1/files/{fid}", headers=service.auth()).status_code == 204
    assert service.client.get(f"/v1/files/{fid}", headers=service.auth()).status_code == 404
    assert service.stored_files() == []


def test_tenants_cannot_see_each_others_files(service: Service) -> None:
    fid = service.file_id("checkpoint", "c.safetensors", CKPT, who="a")
    for method, path in [("GET", ""), ("GET", "/content"), ("DELETE", "")]:
        r = service.client.request(method, f"/v1/files/{fid}{path}", headers=service.auth("b"))
        assert r.status_code == 404 and r.json()["error"]["code"] == "file_not_found"
    assert service.client.get("/v1/files", headers=service.auth("b")).json()["data"] == []
    r = service.client.get("/v1/files", headers=service.auth("b"), params={"after": fid})
    assert r.status_code == 400  # another tenant's id is not a cursor either
    assert service.client.get(f"/v1/files/{fid}", headers=service.auth("a")).status_code == 200
