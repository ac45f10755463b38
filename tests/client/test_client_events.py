"""The client over real HTTP: job events read with httpx-sse (a dropped stream resumed with
Last-Event-ID, every event once), event pages by cursor, the merge list's filters, and the
`merge list` / `events` commands."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from svc_api import Service

from client.api import CalmClient
from client.cli import main
from core import jobs


class CutStream(httpx.SyncByteStream):
    """The server's bytes, frame by frame, until `keep` progress events have passed; then the
    connection "drops" (httpx.ReadError), as a proxy timing out or a network change does."""

    def __init__(self, inner: httpx.SyncByteStream, keep: int) -> None:
        self.inner, self.keep = inner, keep

    def __iter__(self) -> Iterator[bytes]:
        buffer, sent = b"", 0
        for chunk in self.inner:
            buffer += chunk
            while b"\n\n" in buffer:
                if sent >= self.keep:
                    raise httpx.ReadError("connection dropped mid-stream")
                frame, buffer = buffer.split(b"\n\n", 1)
                yield frame + b"\n\n"
                sent += b"event: progress" in frame

    def close(self) -> None:
        self.inner.close()


class DropStreams(httpx.HTTPTransport):
    """The real HTTP transport; the first `cuts` event streams it carries are cut after `keep`
    events each. Records the Last-Event-ID of every stream request."""

    def __init__(self, keep: int, cuts: int = 1) -> None:
        super().__init__()
        self.keep, self.cuts, self.last_event_ids = keep, cuts, []  # type: list[str | None]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if not request.url.path.endswith("/events/stream"):
            return response
        self.last_event_ids.append(request.headers.get("last-event-id"))
        if len(self.last_event_ids) > self.cuts:
            return response
        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=CutStream(response.stream, self.keep),
                              extensions=response.extensions)  # fmt: skip


def finished_job(service: Service, metadata: dict[str, str] | None = None) -> str:
    """A job driven through core.jobs as a worker drives it, to a failure: seven events."""
    job = service.create(service.body(service.merge_inputs(), metadata=metadata or {})).json()["id"]
    with service.client.app.state.sessionmaker() as s:  # type: ignore[attr-defined]
        assert jobs.claim_job(s, job, "test-worker")
        for i in range(3):
            jobs.update_progress(s, job, "mask:task1", 0.2 * (i + 1), f"epoch {i + 1}/3",
                                 {"loss": 1.0 / (i + 1)}, min_interval_s=0)  # fmt: skip
        assert jobs.finish_job(s, job, "failed", "invalid_data", "task1's head has NaN values")
    return job


def test_a_dropped_stream_resumes_with_last_event_id(service: Service, api_url: str) -> None:
    job = finished_job(service)
    transport = DropStreams(keep=2)
    with CalmClient(api_url, service.keys["a"], transport=transport) as client:
        got = list(client.stream_events(job, wait_s=0))
        everything = client.events(job, limit=500)["data"]
    progress = [data for kind, data in got if kind == "progress"]
    assert progress == everything  # each event once, in order, across the drop
    assert got[-1][0] == "end" and got[-1][1]["status"] == "failed"
    assert transport.last_event_ids == [None, str(everything[1]["seq"])]  # resumed after the 2nd


def test_a_stream_that_keeps_dropping_raises_after_the_reconnects(service: Service, api_url: str) -> None:
    job = finished_job(service)
    transport = DropStreams(keep=0, cuts=100)  # every connection drops before its first event
    with CalmClient(api_url, service.keys["a"], transport=transport) as c, pytest.raises(httpx.ReadError):
        next(c.stream_events(job, reconnects=2, wait_s=0))
    assert transport.last_event_ids == [None, None, None]  # the first try and two reconnects
    transport = DropStreams(keep=1, cuts=100)  # one event per connection: progress, never "in a row"
    with CalmClient(api_url, service.keys["a"], transport=transport) as client:
        got = list(client.stream_events(job, reconnects=1, wait_s=0))
    assert [d["seq"] for k, d in got if k == "progress"] == list(range(1, 8)) and got[-1][0] == "end"
    assert transport.last_event_ids == [None, *map(str, range(1, 8))]


def test_event_pages_and_stream_start_after_the_cursor(service: Service, api_url: str) -> None:
    job = finished_job(service)
    with CalmClient(api_url, service.keys["a"]) as client:
        first = client.events(job, limit=3)
        rest = client.events(job, after=first["next_cursor"])
        stream = client.stream_events(job, after=first["next_cursor"])
        streamed = [d["seq"] for k, d in stream if k == "progress"]
    assert [e["seq"] for e in first["data"]] == [1, 2, 3] and first["has_more"]
    assert [e["seq"] for e in rest["data"]] == streamed == list(range(4, 4 + len(streamed)))


def test_the_merge_list_filters(service: Service, api_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    failed = finished_job(service, {"project": "vision"})
    queued = service.create(service.body(service.merge_inputs(), metadata={"project": "vision"})).json()["id"]
    other = service.create(service.body(service.merge_inputs(), metadata={"project": "audio"})).json()["id"]
    with CalmClient(api_url, service.keys["a"]) as client:
        assert [j["id"] for j in client.iter_merges(metadata={"project": "vision"})] == [queued, failed]
        assert [j["id"] for j in client.iter_merges(status="failed")] == [failed]
        assert [j["id"] for j in client.iter_merges(status=["failed", "queued"])] == [other, queued, failed]
    argv = ["--url", api_url, "--api-key", service.keys["a"], "merge", "list"]
    assert main([*argv, "--status", "queued", "--metadata", "project=vision"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{queued}  queued") and "project=vision" in lines[0]
    assert main([*argv, "--limit", "1", "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["next_cursor"] == other
    assert main([*argv, "--status", "bogus"]) == 2
    assert "422 invalid_request" in capsys.readouterr().err


def test_the_events_command(service: Service, api_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    job = finished_job(service)
    argv = ["--url", api_url, "--api-key", service.keys["a"], "events", job]
    assert main([*argv, "--after", "2", "--limit", "2"]) == 0
    out = capsys.readouterr()
    assert [json.loads(line)["seq"] for line in out.out.splitlines()] == [3, 4]
    assert "next: --after 4" in out.err
    assert main([*argv, "--follow", "--after", "5"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [x["data"]["seq"] for x in lines[:-1]] == [6, 7] and lines[-1]["event"] == "end"
