"""The tenant matrix over every endpoint (tenant B on tenant A's ids is 404, lists never show A's
items), per-tenant quotas and rate limits (429 + Retry-After), and API key rotation."""

from __future__ import annotations

from typing import Any

from svc_api import Service
from svc_fixtures import checkpoint_tensors, safetensors_bytes

from core.admin import list_keys, rotate_api_key, set_quota


def a_ids(service: Service) -> dict[str, str]:
    job = service.create(service.body(service.merge_inputs())).json()["id"]
    file = service.file_id("checkpoint", "c.safetensors", safetensors_bytes(checkpoint_tensors()))
    upload = service.client.post("/v1/uploads", headers=service.auth(), json={
        "filename": "x.safetensors", "purpose": "checkpoint", "bytes": 10}).json()["id"]  # fmt: skip
    return {"job": job, "file": file, "upload": upload}


def test_tenant_b_sees_nothing_of_tenant_a(service: Service) -> None:
    ids = a_ids(service)
    j, f, u = ids["job"], ids["file"], ids["upload"]
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", f"/v1/files/{f}", {}), ("DELETE", f"/v1/files/{f}", {}),
        ("GET", f"/v1/files/{f}/content", {}), ("GET", f"/v1/uploads/{u}", {}),
        ("PUT", f"/v1/uploads/{u}/parts/1", {"content": b"0123456789"}),
        ("POST", f"/v1/uploads/{u}/complete", {}), ("POST", f"/v1/uploads/{u}/cancel", {}),
        ("GET", f"/v1/merges/{j}", {}), ("POST", f"/v1/merges/{j}/cancel", {}),
        ("GET", f"/v1/merges/{j}/events", {}), ("GET", f"/v1/merges/{j}/events/stream", {}),
        ("GET", f"/v1/merges/{j}/result", {}), ("GET", f"/v1/merges/{j}/masks", {}),
        ("GET", f"/v1/merges/{j}/masks?download=1", {}), ("GET", f"/v1/merges/{j}/report", {}),
    ]  # fmt: skip
    got = {f"{m} {p}": service.client.request(m, p, headers=service.auth("b"), **kw).status_code
           for m, p, kw in calls}  # fmt: skip
    assert got == {k: 404 for k in got}
    for path in ("/v1/files", "/v1/merges"):
        assert service.client.get(path, headers=service.auth("b")).json()["data"] == []
    r = service.client.get(f"/v1/files?after={f}", headers=service.auth("b"))  # a's cursor
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_cursor"
    r = service.create(service.body(service.merge_inputs("b"), model={
        "arch": "calm-svc-tiny", "checkpoint": f}), who="b")  # fmt: skip
    assert r.status_code in (400, 404)
    # a's things are untouched
    assert service.client.get(f"/v1/files/{f}", headers=service.auth()).status_code == 200
    assert service.client.get(f"/v1/merges/{j}", headers=service.auth()).json()["status"] == "queued"


def _session(service: Service) -> Any:
    return service.client.app.state.sessionmaker()  # type: ignore[attr-defined]


def test_quotas_answer_429_with_retry_after(service: Service) -> None:
    ids = service.merge_inputs()
    with _session(service) as s:
        set_quota(s, service.tenants["a"], active_jobs=1, stored_bytes=10_000)
        s.commit()
    assert service.create(service.body(ids)).status_code == 201
    r = service.create(service.body(ids, seed=2))
    assert r.status_code == 429 and r.json()["error"]["code"] == "job_quota_exceeded"
    assert int(r.headers["retry-after"]) >= 1
    big = safetensors_bytes({"visual.proj": ("F32", [64, 64])})  # 16 KiB: over the 10 KB quota
    r = service.upload("checkpoint", "big.safetensors", big)
    assert r.status_code == 429 and r.json()["error"]["code"] == "storage_quota_exceeded"
    r = service.client.post("/v1/uploads", headers=service.auth(), json={
        "filename": "x.safetensors", "purpose": "checkpoint", "bytes": 50_000})  # fmt: skip
    assert r.status_code == 429 and "retry-after" in r.headers
    assert service.upload("checkpoint", "big.safetensors", big, who="b").status_code == 201  # b unaffected


def test_rate_limit_per_tenant(service: Service) -> None:
    with _session(service) as s:
        set_quota(s, service.tenants["a"], rate_per_s=0.5)
        s.commit()
    codes = [service.client.get("/v1/files", headers=service.auth()).status_code for _ in range(60)]
    assert 429 in codes and codes[0] == 200
    r = service.client.get("/v1/files", headers=service.auth())
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
    assert int(r.headers["retry-after"]) >= 1
    assert service.client.get("/v1/files", headers=service.auth("b")).status_code == 200


def test_key_rotation_with_and_without_grace(service: Service) -> None:
    with _session(service) as s:
        (key, _), = list_keys(s, service.tenants["a"])
        assert service.keys["a"].startswith(key.prefix) and key.prefix != service.keys["a"]
        old, new = rotate_api_key(s, key.prefix, grace_s=3600)
        s.commit()
    assert service.client.get("/v1/files", headers=service.auth()).status_code == 200  # grace period
    assert service.client.get("/v1/files", headers={"Authorization": f"Bearer {new}"}).status_code == 200
    with _session(service) as s:
        rotate_api_key(s, new[:12])  # by its prefix, no grace: it stops at once
        s.commit()
    assert service.client.get("/v1/files", headers={"Authorization": f"Bearer {new}"}).status_code == 401
