"""/v1/uploads (parts re-sent, resumed, joined and validated like POST /v1/files; failures leave
nothing half-made; tenancy, cancel, expiry) and the client's `upload_resumable` after a crash."""

from __future__ import annotations

import hashlib
import json
import pickle
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from svc_api import Service
from svc_fixtures import checkpoint_tensors, safetensors_bytes

from client.api import ApiError
from client.resumable import upload_resumable
from core.models import FileObject, Upload, utcnow
from core.uploads import purge_expired

# upload_resumable passes per-request timeouts, which the TestClient ignores with a warning.
TESTCLIENT_TIMEOUT = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")
CKPT = safetensors_bytes(checkpoint_tensors())
THIRD = len(CKPT) // 3
PARTS = [CKPT[:THIRD], CKPT[THIRD : 2 * THIRD], CKPT[2 * THIRD :]]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_rows(service: Service) -> list[FileObject]:
    with service.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        return session.query(FileObject).filter(FileObject.tenant_id.in_(service.tenants.values())).all()


def create(service: Service, data: bytes = CKPT, who: str = "a", **body: Any) -> httpx.Response:
    body = {"filename": "big.safetensors", "purpose": "checkpoint", "bytes": len(data)} | body
    return service.client.post("/v1/uploads", headers=service.auth(who), json=body)


def new_upload(service: Service, data: bytes = CKPT, **body: Any) -> str:
    r = create(service, data, **body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def put(service: Service, uid: str, n: int, data: bytes, who: str = "a") -> httpx.Response:
    headers = service.auth(who) | {"Content-Type": "application/octet-stream"}
    return service.client.put(f"/v1/uploads/{uid}/parts/{n}", headers=headers, content=data)


def put_all(service: Service, uid: str, parts: list[bytes] = PARTS) -> None:
    for n, data in enumerate(parts, start=1):
        assert put(service, uid, n, data).status_code == 200


def call(service: Service, method: str, path: str, who: str = "a", **kw: Any) -> httpx.Response:
    return service.client.request(method, f"/v1/uploads{path}", headers=service.auth(who), **kw)


def error(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


def set_rows(service: Service, ids: list[str], **values: Any) -> None:
    with service.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        session.execute(update(Upload).where(Upload.id.in_(ids)).values(**values))
        session.commit()


def test_three_parts_one_resent_equal_a_direct_upload(service: Service) -> None:
    direct = service.upload("checkpoint", "direct.safetensors", CKPT).json()
    up = create(service, sha256=sha(CKPT)).json()
    assert up["id"].startswith("upload-") and up["status"] == "pending" and up["parts"] == []
    assert up["part_size"] == len(CKPT) and up["expires_at"] > up["created_at"]
    for n, data in [(3, PARTS[2]), (1, b"garbage" * 10), (2, PARTS[1]), (1, PARTS[0])]:  # 1 re-sent
        part = put(service, up["id"], n, data).json()
        assert (part["part_number"], part["bytes"], part["sha256"]) == (n, len(data), sha(data))
    got = call(service, "GET", f"/{up['id']}").json()  # what a client resuming would see
    assert [(p["part_number"], p["bytes"], p["sha256"]) for p in got["parts"]] == [
        (n, len(d), sha(d)) for n, d in enumerate(PARTS, start=1)
    ]
    assert got["received_bytes"] == len(CKPT) and got["status"] == "pending"
    assert len(service.stored_files()) == 1 + 3  # the replaced part's blob is gone
    upload, file = call(service, "POST", f"/{up['id']}/complete").json().values()
    assert upload["status"] == "completed" and upload["file_id"] == file["id"] and upload["parts"] == []
    assert (file["sha256"], file["bytes"], file["status"]) == (direct["sha256"], len(CKPT), "processed")
    assert file["tensors"] == direct["tensors"] and file["filename"] == "big.safetensors"
    assert service.client.get(f"/v1/files/{file['id']}/content", headers=service.auth()).content == CKPT
    assert len(service.stored_files()) == 2  # the two files; no parts left
    ids = service.merge_inputs()  # the uploaded file is usable as a merge's base checkpoint
    assert service.create(service.body(dict(ids, base=file["id"]))).status_code == 201
    assert error(call(service, "POST", f"/{up['id']}/complete")) == (409, "upload_not_pending")
    assert error(call(service, "POST", f"/{up['id']}/cancel")) == (409, "upload_not_pending")


def test_part_numbers_choose_and_order_the_parts(service: Service) -> None:
    uid = new_upload(service)
    put_all(service, uid, [PARTS[0], PARTS[1] + PARTS[2]])
    assert error(put(service, uid, 3, b"x")) == (413, "part_too_large")  # would pass the declared total
    for numbers, code in [([2, 1], "invalid_part_order"), ([1, 1, 2], "invalid_part_order"),
                          ([1, 2, 5], "part_missing"), ([1], "size_mismatch")]:  # fmt: skip
        r = call(service, "POST", f"/{uid}/complete", json={"part_numbers": numbers})
        assert error(r) == (400, code), numbers
    r = call(service, "POST", f"/{uid}/complete", json={"part_numbers": [1, 2]})
    assert r.status_code == 200 and r.json()["file"]["sha256"] == sha(CKPT)


@pytest.mark.parametrize(
    ("body", "code"),
    [({"bytes": len(CKPT) + 10}, "size_mismatch"), ({"sha256": sha(b"other")}, "checksum_mismatch")],
)
def test_wrong_size_or_checksum_keep_the_upload_pending(service: Service, body: dict, code: str) -> None:
    uid = new_upload(service, **body)
    put_all(service, uid)
    assert error(call(service, "POST", f"/{uid}/complete")) == (400, code)
    got = call(service, "GET", f"/{uid}").json()
    assert got["status"] == "pending" and len(got["parts"]) == 3  # fixable: re-send parts, retry
    assert file_rows(service) == [] and len(service.stored_files()) == 3  # no final object


def test_refused_up_front(service: Service) -> None:
    assert error(create(service, bytes=service.settings.max_upload_bytes + 1)) == (413, "file_too_large")
    assert error(create(service, filename="model.pt")) == (400, "unsupported_checkpoint_format")
    assert error(create(service, filename="images.zip")) == (400, "unsupported_file_type")
    assert error(create(service, purpose="weights")) == (422, "invalid_request")
    assert error(create(service, sha256="xyz")) == (422, "invalid_request")
    uid = new_upload(service)
    assert error(put(service, uid, 0, b"x")) == (422, "invalid_request")
    assert error(put(service, uid, 10_001, b"x")) == (422, "invalid_request")
    assert error(put(service, uid, 1, b"")) == (400, "empty_part")
    assert error(put(service, uid, 1, CKPT + b"x")) == (413, "part_too_large")
    assert error(call(service, "POST", f"/{uid}/complete")) == (400, "no_parts")
    assert service.stored_files() == []


BAD_FILES = [
    (pickle.dumps({"w": list(range(300))}), "unsupported_checkpoint_format"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{bad" + bytes(40), "invalid_safetensors"),
]


@pytest.mark.parametrize(("data", "code"), BAD_FILES)
def test_invalid_file_fails_the_upload_at_complete(service: Service, data: bytes, code: str) -> None:
    uid = new_upload(service, data)
    put_all(service, uid, [data[:20], data[20:]])
    assert error(call(service, "POST", f"/{uid}/complete")) == (400, code)
    got = call(service, "GET", f"/{uid}").json()
    assert (got["status"], got["error"]["code"], got["parts"], got["file_id"]) == ("failed", code, [], None)
    assert file_rows(service) == [] and service.stored_files() == []
    assert error(put(service, uid, 1, data)) == (409, "upload_not_pending")


def test_tenants_cannot_touch_each_others_uploads(service: Service) -> None:
    uid = new_upload(service)
    put_all(service, uid, PARTS[:2])
    for method, path in [("GET", ""), ("POST", "/complete"), ("POST", "/cancel")]:
        assert error(call(service, method, f"/{uid}{path}", who="b")) == (404, "upload_not_found")
    assert error(put(service, uid, 3, PARTS[2], who="b")) == (404, "upload_not_found")
    got = call(service, "GET", f"/{uid}").json()
    assert got["status"] == "pending" and [p["part_number"] for p in got["parts"]] == [1, 2]
    assert len(service.stored_files()) == 2


def test_cancel_deletes_the_parts(service: Service) -> None:
    uid = new_upload(service)
    put_all(service, uid, PARTS[:2])
    r = call(service, "POST", f"/{uid}/cancel")
    assert r.status_code == 200 and (r.json()["status"], r.json()["parts"]) == ("cancelled", [])
    assert service.stored_files() == []
    assert call(service, "POST", f"/{uid}/cancel").json()["status"] == "cancelled"  # harmless again
    assert error(put(service, uid, 3, PARTS[2])) == (409, "upload_not_pending")
    assert error(call(service, "POST", f"/{uid}/complete")) == (409, "upload_not_pending")
    assert error(call(service, "GET", "/upload-nope")) == (404, "upload_not_found")


def test_expired_uploads_lose_their_parts(service: Service) -> None:
    first, second = new_upload(service), new_upload(service)
    for uid in (first, second):
        put_all(service, uid, PARTS[:1])
    set_rows(service, [first, second], expires_at=utcnow() - timedelta(seconds=1))
    got = call(service, "GET", f"/{first}").json()  # noticed on access ...
    assert (got["status"], got["parts"], got["error"]["code"]) == ("expired", [], "upload_expired")
    assert error(put(service, first, 2, PARTS[1])) == (409, "upload_expired")
    with service.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        assert purge_expired(session, service.storage) >= 1
    assert call(service, "GET", f"/{second}").json()["status"] == "expired"
    assert service.stored_files() == []


def test_completing_freezes_the_parts_until_it_goes_stale(service: Service) -> None:
    uid = new_upload(service)
    put_all(service, uid)
    set_rows(service, [uid], status="completing", updated_at=utcnow())  # another request joins them
    r = put(service, uid, 1, PARTS[0])
    assert error(r) == (409, "upload_not_pending") and "being completed" in r.json()["error"]["message"]
    assert error(call(service, "POST", f"/{uid}/complete")) == (409, "upload_not_pending")
    assert error(call(service, "POST", f"/{uid}/cancel")) == (409, "upload_not_pending")
    set_rows(service, [uid], updated_at=utcnow() - timedelta(hours=1))  # ... crashed long ago: retry
    r = call(service, "POST", f"/{uid}/complete")
    assert r.status_code == 200 and r.json()["file"]["sha256"] == sha(CKPT)
    assert len(file_rows(service)) == 1


def count_puts(http: httpx.Client, crash_after: int | None = None) -> list[int]:
    """Counts `http`'s part PUTs (the list's length); the one after `crash_after` raises."""
    puts: list[int] = []

    def hook(request: httpx.Request) -> None:
        if request.method == "PUT":
            if len(puts) == crash_after:
                raise RuntimeError("simulated crash")
            puts.append(1)

    http.event_hooks = {"request": [hook], "response": []}
    return puts


@TESTCLIENT_TIMEOUT
def test_client_resumes_after_a_crash(service: Service, tmp_path: Path) -> None:
    (path := tmp_path / "big.safetensors").write_bytes(CKPT)
    state = tmp_path / "big.upload.json"
    http = TestClient(service.client.app, headers=service.auth())  # an httpx.Client over the app
    count_puts(http, crash_after=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        upload_resumable(http, path, "checkpoint", part_size=1024, state_file=state)
    uid = json.loads(state.read_text())["upload_id"]
    assert [p["part_number"] for p in call(service, "GET", f"/{uid}").json()["parts"]] == [1, 2]
    assert put(service, uid, 1, b"corrupt").status_code == 200  # a part the server got wrong
    puts = count_puts(http)
    sent: list[int] = []
    file = upload_resumable(http, path, "checkpoint", part_size=4096, state_file=state, progress=sent.append)
    n_parts = -(-len(CKPT) // 1024)  # the recorded part size wins over the new argument
    assert len(puts) == n_parts - 1  # part 2 was skipped, part 1 re-sent
    assert sum(sent) == len(CKPT) and not state.exists()
    assert (file["sha256"], file["status"], file["bytes"]) == (sha(CKPT), "processed", len(CKPT))
    assert call(service, "GET", f"/{uid}").json()["file_id"] == file["id"]


@TESTCLIENT_TIMEOUT
def test_client_upload_without_state_and_its_errors(service: Service, tmp_path: Path) -> None:
    http = TestClient(service.client.app, headers=service.auth())
    good, bad = tmp_path / "ok.safetensors", tmp_path / "bad.safetensors"
    good.write_bytes(CKPT)
    bad.write_bytes(pickle.dumps(list(range(1000))))
    file = upload_resumable(http, good, "checkpoint", part_size=2048)
    assert file["sha256"] == sha(CKPT) and file["id"].startswith("file-")
    with pytest.raises(ApiError) as e:
        upload_resumable(http, bad, "checkpoint", part_size=2048)
    assert (e.value.status, e.value.code) == (400, "unsupported_checkpoint_format")
