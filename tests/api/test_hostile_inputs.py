"""Table-driven hostile inputs: each row is an input -> (status, code), and nothing is left
behind in the database or storage. The cases live in tests/hostile_cases.py (bench/hostile.py
sends the same ones to a live instance)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest
from hostile_cases import BAD_OPTIONS, UPLOADS, VALID_UPLOADS, apply_override
from sqlalchemy import func, select
from svc_api import Service
from svc_fixtures import safetensors_bytes

from core.models import FileObject, MergeJob, Upload


@pytest.fixture(autouse=True)
def _no_rate_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dozens of requests per second are the point here (set before `service` reads settings)."""
    monkeypatch.setenv("CALM_RATE_LIMIT_PER_S", "1000000")
    monkeypatch.setenv("CALM_RATE_LIMIT_BURST", "1000000")


def footprint(service: Service) -> tuple[int, int, int, int]:
    """(files, uploads, jobs) rows of both tenants, and blobs (temp files included) in storage."""
    tenants = list(service.tenants.values())
    with service.client.app.state.sessionmaker() as s:  # type: ignore[attr-defined]
        counts = [
            s.scalar(select(func.count()).select_from(m).where(m.tenant_id.in_(tenants)))
            for m in (FileObject, Upload, MergeJob)
        ]
    return (*counts, len(service.stored_files()))  # type: ignore[return-value]


def outcome(r: Any) -> tuple[int, str | None]:
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    return r.status_code, (body.get("error") or {}).get("code")


def test_hostile_uploads_are_refused_and_leave_nothing(service: Service) -> None:
    before = footprint(service)
    got = {}
    for name, (purpose, filename, data, status, code) in UPLOADS.items():
        got[name] = (outcome(service.upload(purpose, filename, data)), (status, code))
        got[name + " (raw)"] = (
            outcome(service.client.post(
                "/v1/files", params={"purpose": purpose, "filename": filename}, content=data,
                headers=service.auth())),
            (status, code),
        )  # fmt: skip
    wrong = {name: pair for name, pair in got.items() if pair[0] != pair[1]}
    assert wrong == {}
    assert footprint(service) == before


def test_valid_uploads_still_pass(service: Service) -> None:
    for name, (purpose, filename, data) in VALID_UPLOADS.items():
        r = service.upload(purpose, filename, data)
        assert r.status_code == 201, (name, r.text)


def test_hostile_merge_requests_are_refused_before_queueing(service: Service) -> None:
    ids = service.merge_inputs()
    body = service.body(ids)
    before = footprint(service)
    headers = {**service.auth(), "Content-Type": "application/json"}

    def create(override: dict[str, Any]) -> Any:  # json.dumps: NaN and Infinity as Python writes them
        return service.client.post("/v1/merges", content=json.dumps(apply_override(body, override)),
                                   headers=headers)  # fmt: skip

    got = {name: (outcome(create(o)), (s, c)) for name, (o, s, c) in BAD_OPTIONS.items()}
    assert {n: p for n, p in got.items() if p[0] != p[1]} == {}
    assert footprint(service) == before and service.queued_job_ids() == []


def test_dataset_shape_must_fit_the_model(service: Service) -> None:
    ids = service.merge_inputs()
    wrong = service.file_id("dataset", "d.safetensors", safetensors_bytes({"images": ("F32", [2, 3, 8, 8])}))
    r = service.create(service.body(dict(ids, datasets=[wrong, ids["datasets"][1]])))
    assert outcome(r) == (400, "image_shape_mismatch") and "[3, 16, 16]" in r.json()["error"]["message"]


def test_request_limits(service: Service) -> None:
    big = {"model": {"arch": "x" * (2 << 20)}}
    assert outcome(service.client.post("/v1/merges", json=big, headers=service.auth())) == (
        413, "request_too_large")  # fmt: skip

    def chunked() -> Any:
        yield b'{"model": "' + b"x" * (2 << 20) + b'"}'

    r = service.client.post("/v1/merges", content=chunked(), headers=service.auth())
    assert outcome(r) == (413, "request_too_large")
    fields = {f"f{i}": "v" * 60_000 for i in range(4)}  # 240 KB of form fields in one request
    r = service.client.post("/v1/files", headers=service.auth(), data={"purpose": "checkpoint", **fields},
                            files={"file": ("x.safetensors", b"1234")})  # fmt: skip
    assert outcome(r) == (413, "request_too_large")
    before = footprint(service)
    boundary = "b0undary"
    cut = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\ndataset\r\n"
           f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.safetensors\"\r\n"
           "Content-Type: application/octet-stream\r\n\r\n").encode() + safetensors_bytes(
        {"images": ("F32", [2, 3, 16, 16])})  # fmt: skip
    headers = {**service.auth(), "Content-Type": f"multipart/form-data; boundary={boundary}"}
    for body in (cut, cut + b"\r\n", cut + f"\r\n--{boundary}\r\n".encode()):
        assert outcome(service.client.post("/v1/files", content=body, headers=headers)) == (
            400, "invalid_multipart")  # fmt: skip
    ok = cut + f"\r\n--{boundary}--\r\n".encode()
    assert service.client.post("/v1/files", content=ok, headers=headers).status_code == 201
    assert footprint(service)[0] == before[0] + 1


def test_lists_return_summaries_without_request_bodies(service: Service) -> None:
    job = service.create(service.body(service.merge_inputs())).json()
    assert "request" in job
    listed = service.client.get("/v1/merges", headers=service.auth()).json()["data"]
    assert [j["id"] for j in listed] == [job["id"]] and "request" not in listed[0]


@pytest.mark.parametrize("value", ["9223372036854775808", "2147483648", "-1", "1e3"])
def test_event_cursors_are_bounded(service: Service, value: str) -> None:
    job = service.create(service.body(service.merge_inputs())).json()["id"]
    for name in ("after", "after_seq"):  # the cursor, and its deprecated alias
        for path in ("events", "events/stream"):
            r = service.client.get(f"/v1/merges/{job}/{path}?{name}={value}", headers=service.auth())
            assert outcome(r) == (422, "invalid_request")
    headers = {**service.auth(), "Last-Event-ID": "x1"}
    r = service.client.get(f"/v1/merges/{job}/events/stream", headers=headers)
    assert outcome(r) == (422, "invalid_request")


def test_last_event_id_beyond_any_seq_is_clamped(service: Service) -> None:
    job = service.create(service.body(service.merge_inputs())).json()["id"]
    service.client.post(f"/v1/merges/{job}/cancel", headers=service.auth())
    headers = {**service.auth(), "Last-Event-ID": "9" * 30}
    with service.client.stream("GET", f"/v1/merges/{job}/events/stream", headers=headers) as r:
        text = "".join(r.iter_text())
    assert r.status_code == 200 and "event: end" in text and "event: progress" not in text


def test_a_key_whose_tenant_is_gone_is_refused(service: Service) -> None:
    if not service.settings.is_sqlite:
        pytest.skip("PostgreSQL always enforces the foreign key")
    path = service.settings.database_url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path)  # a plain connection: foreign keys are off, as in the sqlite3 shell
    conn.execute("DELETE FROM tenants WHERE id = ?", (service.tenants["a"],))
    conn.commit()
    conn.close()
    r = service.client.post("/v1/files", headers=service.auth(), files={"file": ("x.safetensors", b"1")})
    assert outcome(r) == (401, "invalid_api_key")
