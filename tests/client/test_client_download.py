"""`download_result` over real HTTP resumes a partial download with Range: 206 with the rest of
the bytes (Content-Range), appended to the `.part` file."""

from __future__ import annotations

from pathlib import Path

import httpx
from svc_api import Service
from svc_fixtures import safetensors_bytes

from client.api import CalmClient
from core import jobs

MERGED = safetensors_bytes({"visual.proj": ("F32", [64, 32])}, seed=11)


class Recording(httpx.HTTPTransport):
    """The real transport, keeping (Range sent, status, Content-Range) of every download."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str | None, int, str | None]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path.endswith("/result"):
            self.seen.append((request.headers.get("range"), response.status_code,
                              response.headers.get("content-range")))  # fmt: skip
        return response


def succeeded_job(service: Service) -> str:
    job = service.create(service.body(service.merge_inputs())).json()["id"]
    key = f"{jobs.result_prefix(job)}/merged.safetensors"
    service.storage.write_stream(key, [MERGED])
    with service.client.app.state.sessionmaker() as s:  # type: ignore[attr-defined]
        assert jobs.claim_job(s, job, "test-worker")
        assert jobs.finish_job(s, job, "succeeded", result_paths={"merged": key}, storage=service.storage)
    return job


def test_an_interrupted_download_resumes_with_range(service: Service, api_url: str, tmp_path: Path) -> None:
    job = succeeded_job(service)
    out = tmp_path / "merged.safetensors"
    (tmp_path / "merged.safetensors.part").write_bytes(MERGED[:1000])  # what a dropped download left
    transport = Recording()
    with CalmClient(api_url, service.keys["a"], transport=transport) as client:
        assert client.download_result(job, out) == out
    assert out.read_bytes() == MERGED and not (tmp_path / "merged.safetensors.part").exists()
    assert transport.seen == [("bytes=1000-", 206, f"bytes 1000-{len(MERGED) - 1}/{len(MERGED)}")]
    with CalmClient(api_url, service.keys["a"], transport=transport) as client:
        client.download_result(job, tmp_path / "again.safetensors")  # nothing partial: all of it
    assert transport.seen[-1] == (None, 200, None) and (tmp_path / "again.safetensors").read_bytes() == MERGED
