"""The cases of bench/hostile.py: each sends one hostile (or valid edge) request to a live API.

The hostile files and bodies come from tests/hostile_cases.py (the in-process table test uses
the same ones); the valid tiny model is built here with torch (the bench, not the API, has it).
"""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
from hostile_cases import BAD_OPTIONS, UPLOADS, apply_override, checkpoint_with
from svc_fixtures import zip_bytes

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 16, "layers": 2, "width": 32, "head_width": 16, "patch_size": 4},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
OPTIONS = {"epochs": 2, "num_sequential": 1, "batch_size": 8, "lr_grid": [1.0]}
Expect = tuple[int, str | None] | str  # (status, code or None for any code), "accept" or "any"


@dataclass
class Case:
    name: str
    send: Callable[[httpx.Client], httpx.Response]
    expect: Expect


def _tiny_files() -> dict[str, bytes]:
    import torch
    from safetensors.torch import save

    from calm.models import build_model, register_arch

    register_arch("calm-hostile-tiny", json.loads(json.dumps(TINY)))
    torch.manual_seed(0)
    model, _ = build_model("calm-hostile-tiny")
    base = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    out = {"base": save(base)}
    for i in range(2):
        out[f"task{i}"] = save(
            {
                k: (v + 0.02 * torch.randn_like(v))
                if k.startswith("visual.") and v.is_floating_point()
                else v
                for k, v in base.items()
            }
        )
        out[f"data{i}"] = save({"images": torch.randn(16, 3, 16, 16)})
    return out


def valid_files(client: httpx.Client) -> dict[str, Any]:
    """Uploads a tiny base, two task checkpoints, two datasets and an image zip; their ids."""

    def up(purpose: str, name: str, data: bytes) -> str:
        r = client.post("/v1/files", data={"purpose": purpose}, files={"file": (name, data)})
        r.raise_for_status()
        return r.json()["id"]

    files = _tiny_files()
    from svc_fixtures import png_bytes

    pngs = {f"{i % 2}/{i}.png": png_bytes(16, 16) for i in range(8)}
    buf = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(buf, "w") as z:
        for name, data in pngs.items():
            z.writestr(name, data)
    return {
        "base": up("checkpoint", "base.safetensors", files["base"]),
        "checkpoints": [up("checkpoint", f"t{i}.safetensors", files[f"task{i}"]) for i in range(2)],
        "datasets": [up("dataset", f"d{i}.safetensors", files[f"data{i}"]) for i in range(2)],
        "zip": up("dataset", "images.zip", buf.getvalue()),
    }


def body(ids: dict[str, Any], **over: Any) -> dict[str, Any]:
    b: dict[str, Any] = {
        "model": {"arch": "calm-hostile-tiny", "custom_config": TINY, "checkpoint": ids["base"]},
        "tasks": [
            {"name": f"task{i}", "checkpoint": c, "unlabeled": d, "classnames": ["even", "odd"]}
            for i, (c, d) in enumerate(zip(ids["checkpoints"], ids["datasets"], strict=True))
        ],
        "options": OPTIONS,
        "seed": 1,
        "evaluate": False,
    }
    b.update(over)
    return b


def _post_json(path: str, payload: Any, **headers: str) -> Callable[[httpx.Client], httpx.Response]:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return lambda c: c.post(path, content=raw, headers={"Content-Type": "application/json", **headers})


def _resumable(purpose: str, filename: str, data: bytes) -> Callable[[httpx.Client], httpx.Response]:
    def send(c: httpx.Client) -> httpx.Response:
        r = c.post("/v1/uploads", json={"filename": filename, "purpose": purpose, "bytes": len(data)})
        if r.status_code != 201:
            return r
        uid = r.json()["id"]
        c.put(f"/v1/uploads/{uid}/parts/1", content=data)
        return c.post(f"/v1/uploads/{uid}/complete")

    return send


def _disconnect(url: str, head: bytes, sent: bytes) -> Callable[[httpx.Client], httpx.Response]:
    """Sends headers promising more than `sent`, then closes the connection."""

    def send(c: httpx.Client) -> httpx.Response:
        u = urlparse(url)
        with socket.create_connection((u.hostname, u.port), timeout=10) as s:
            s.sendall(head + sent)
        return httpx.Response(499, request=httpx.Request("POST", url))

    return send


def _upload_cases() -> list[Case]:
    cases = []
    for name, (purpose, filename, data, status, code) in UPLOADS.items():
        files = {"file": (filename, data)}
        cases.append(
            Case(
                f"upload multipart: {name}",
                lambda c, f=files, p=purpose: c.post("/v1/files", data={"purpose": p}, files=f),
                (status, code),
            )
        )
        cases.append(
            Case(
                f"upload raw: {name}",
                lambda c, d=data, p=purpose, n=filename: c.post(
                    "/v1/files", params={"purpose": p, "filename": n}, content=d
                ),
                (status, code),
            )
        )
        expect = (422, "invalid_request") if not data else (status, code)
        cases.append(Case(f"upload resumable: {name}", _resumable(purpose, filename, data), expect))
    return cases


def _job_cases(ids: dict[str, Any]) -> list[Case]:
    valid = body(ids)
    cases = [
        Case(f"merge: {n}", _post_json("/v1/merges", apply_override(valid, o)), (s, c))
        for n, (o, s, c) in BAD_OPTIONS.items()
    ]
    accepted = {
        "calm": valid,
        "task arithmetic": body(ids, method="task_arithmetic", options={"scaling": 0.5}),
        "escaped braces in a template": apply_override(valid, {"templates": ["a {{photo}} of {}."]}),
        "numeric lr": body(ids, options={**OPTIONS, "lr": 1e7}),
        "full metadata": body(ids, metadata={f"k{i}": "v" * 512 for i in range(16)}),
        "image zip dataset": body(
            ids, tasks=[dict(valid["tasks"][0], unlabeled=ids["zip"]), valid["tasks"][1]]
        ),
    }
    cases += [
        Case(
            f"merge accepted: {n}",
            _post_json("/v1/merges", b, **{"Idempotency-Key": f"hostile-{n}"}),
            "accept",
        )
        for n, b in accepted.items()
    ]
    malformed: dict[str, bytes] = {
        "not json": b"{not json",
        "a list": b"[]",
        "deep nesting": b"[" * 50_000 + b"]" * 50_000,
        "1e999": b'{"seed": 1e999}',
        "huge integer": b'{"seed": ' + b"9" * 5000 + b"}",
        "utf-16": json.dumps(valid).encode("utf-16"),
        "empty": b"",
    }
    cases += [
        Case(f"malformed json: {n}", _post_json("/v1/merges", raw), "any") for n, raw in malformed.items()
    ]
    return cases


def _probe_cases(ids: dict[str, Any], url: str, keys: dict[str, str], other: httpx.Client) -> list[Case]:
    f = ids["base"]
    bad_auth = {
        "none": {"Authorization": ""},
        "wrong key": {"Authorization": "Bearer calm_nope"},
        "basic": {"Authorization": "Basic dXNlcjpwYXNz"},
        "8 KB key": {"Authorization": "Bearer " + "x" * 8000},
        "b's key with a twist": {"Authorization": f"Bearer {keys['b']}x"},
        "lowercase scheme": {"Authorization": f"bearer{keys['a']}"},
    }
    cases = [
        Case(f"auth: {n} on {p}", lambda c, h=h, p=p: c.get(p, headers=h), (401, "invalid_api_key"))
        for n, h in bad_auth.items()
        for p in ("/v1/files", f"/v1/files/{f}")
    ]
    cases.append(
        Case(
            "auth: key in the query string",
            lambda c: httpx.get(f"{url}/v1/files?api_key={keys['a']}"),
            (401, "invalid_api_key"),
        )
    )
    for path in (
        f"/v1/files/{f}",
        f"/v1/files/{f}/content",
        f"/v1/merges/{ids['job']}",
        f"/v1/merges/{ids['job']}/events",
        f"/v1/merges/{ids['job']}/result",
        f"/v1/merges/{ids['job']}/masks",
        f"/v1/merges/{ids['job']}/report",
    ):
        cases.append(Case(f"tenant b: GET {path}", lambda c, p=path: other.get(p), (404, None)))
    cases.append(Case("tenant b: DELETE a's file", lambda c: other.delete(f"/v1/files/{f}"), (404, None)))
    cases.append(
        Case("tenant b: cancel a's job", lambda c: other.post(f"/v1/merges/{ids['job']}/cancel"), (404, None))
    )
    cases.append(
        Case("tenant b: a's file in a job", _post_json_as(other, body(ids)), (404, "file_not_found"))
    )
    for v in ("9223372036854775808", "2147483648", "-1", "x"):
        cases.append(
            Case(
                f"events after={v}",
                lambda c, v=v: c.get(f"/v1/merges/{ids['job']}/events", params={"after": v}),
                (422, "invalid_request"),
            )
        )
    for path, query in ((f"/v1/merges/{ids['job']}", {"after": "3"}), ("/v1/merges", {"stauts": "queued"})):
        cases.append(
            Case(
                f"unknown parameter {path} {query}",
                lambda c, p=path, q=query: c.get(p, params=q),
                (400, "unknown_query_parameter"),
            )
        )
    cases.append(
        Case("merge list status=bogus", lambda c: c.get("/v1/merges", params={"status": "bogus"}),
             (422, "invalid_request"))
    )
    cases.append(
        Case(
            "Last-Event-ID not a number",
            lambda c: c.get(f"/v1/merges/{ids['job']}/events/stream", headers={"Last-Event-ID": "9e99"}),
            (422, "invalid_request"),
        )
    )
    for rng in (
        "bytes=abc",
        "bytes=999999999-",
        "bytes=0-0",
        "items=0-1",
        "bytes=-0",
        "bytes=" + "0-1," * 500,
    ):
        cases.append(
            Case(
                f"range {rng[:20]}",
                lambda c, r=rng: c.get(f"/v1/files/{f}/content", headers={"Range": r}),
                "any",
            )
        )
    for kind in ("files", "merges", "uploads"):
        cases.append(
            Case(
                f"unknown {kind} id",
                lambda c, k=kind: c.get(f"/v1/{k}/{k[:-1]}-000000000000000000000000"),
                (404, None),
            )
        )
    return cases


def _post_json_as(client: httpx.Client, payload: Any) -> Callable[[httpx.Client], httpx.Response]:
    return lambda _: client.post("/v1/merges", json=payload)


def _limit_cases(url: str, keys: dict[str, str]) -> list[Case]:
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\ncheckpoint\r\n'
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="c.safetensors"\r\n\r\n'
    ).encode()
    payload = checkpoint_with(b"\x00\x00\x00\x00")
    mp = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    cases = [
        Case(
            "2 MiB job body", _post_json("/v1/merges", {"model": "x" * (2 << 20)}), (413, "request_too_large")
        ),
        Case(
            "chunked 2 MiB job body",
            lambda c: c.post(
                "/v1/merges",
                content=iter([b"[" + b"0," * (1 << 20)]),
                headers={"Content-Type": "application/json"},
            ),
            (413, "request_too_large"),
        ),
        Case(
            "form fields 10 x 60 KB",
            lambda c: c.post(
                "/v1/files",
                data={f"f{i}": "v" * 60_000 for i in range(10)},
                files={"file": ("c.safetensors", payload)},
            ),
            (413, "request_too_large"),
        ),
        Case(
            "2000 form fields",
            lambda c: c.post(
                "/v1/files",
                data={f"f{i}": "v" for i in range(2000)},
                files={"file": ("c.safetensors", payload)},
            ),
            (400, "invalid_multipart"),
        ),
        Case(
            "multipart without closing boundary",
            lambda c: c.post("/v1/files", content=head + payload, headers=mp),
            (400, "invalid_multipart"),
        ),
        Case(
            "multipart cut inside the file",
            lambda c: c.post("/v1/files", content=head + payload[:100], headers=mp),
            (400, "invalid_multipart"),
        ),
        Case(
            "multipart without boundary parameter",
            lambda c: c.post("/v1/files", content=head, headers={"Content-Type": "multipart/form-data"}),
            (400, "invalid_multipart"),
        ),
        Case(
            "declared 5 GiB upload",
            lambda c: c.post(
                "/v1/uploads", json={"filename": "x.safetensors", "purpose": "checkpoint", "bytes": 5 << 30}
            ),
            (413, "file_too_large"),
        ),
        Case(
            "declared 2^70 bytes",
            lambda c: c.post(
                "/v1/uploads", json={"filename": "x.safetensors", "purpose": "checkpoint", "bytes": 2**70}
            ),
            (413, "file_too_large"),
        ),
    ]
    u = urlparse(url)
    auth = f"Authorization: Bearer {keys['a']}\r\nHost: {u.hostname}\r\n"
    for name, path, ctype, body in (
        ("multipart", "/v1/files", mp["Content-Type"], head + payload[:200]),
        (
            "raw",
            "/v1/files?purpose=checkpoint&filename=c.safetensors",
            "application/octet-stream",
            payload[:200],
        ),
    ):
        h = f"POST {path} HTTP/1.1\r\n{auth}Content-Type: {ctype}\r\nContent-Length: 1000000\r\n\r\n".encode()
        cases.append(Case(f"client disconnects mid-upload ({name})", _disconnect(url, h, body), "any"))
    return cases


def build_cases(ids: dict[str, Any], url: str, keys: dict[str, str], other: httpx.Client) -> list[Case]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['a']}"}, timeout=60) as c:
        job = c.post("/v1/merges", json=body(ids), headers={"Idempotency-Key": "hostile-probe"})
        job.raise_for_status()
        ids = {**ids, "job": job.json()["id"]}
    return [
        *_upload_cases(),
        *_job_cases(ids),
        *_probe_cases(ids, url, keys, other),
        *_limit_cases(url, keys),
    ]


def leftovers(database_url: str, storage: Path) -> list[str]:
    """Blobs no row names (and rows whose blob is gone), temp files included."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    with engine.connect() as conn:
        files = {r[0] for r in conn.execute(text("SELECT storage_key FROM files"))}
        parts = {r[0] for r in conn.execute(text("SELECT storage_key FROM upload_parts"))}
        results = {r[0] for r in conn.execute(text("SELECT id FROM merge_jobs"))}
    engine.dispose()
    found = {p.relative_to(storage).as_posix() for p in storage.rglob("*") if p.is_file()}
    stray = [k for k in found - files - parts if not any(f"/{j}/" in f"/{k}" for j in results)]
    return sorted(stray) + sorted(f"missing blob {k}" for k in files - found)


__all__ = ["Case", "build_cases", "leftovers", "valid_files", "zip_bytes"]
