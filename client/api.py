"""`CalmClient`: the merging service's REST API from Python (httpx; no torch).

    client = CalmClient("http://127.0.0.1:8000", api_key)
    base = client.upload_file("base.safetensors", "checkpoint")["id"]
    job = client.create_merge({...})            # body of POST /v1/merges (file ids)
    job = client.watch(job["id"])               # progress bar until it finishes
    client.download_result(job["id"], "merged.safetensors")
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse

from client.display import Bar, make_bar
from client.errors import ApiError, api_error
from client.resumable import MiB, state_file_for, upload_resumable

__all__ = ["FINISHED", "RESUMABLE_ABOVE", "ApiError", "CalmClient"]
FINISHED = ("succeeded", "failed", "cancelled")
CHUNK = 1 << 20
RESUMABLE_ABOVE = 256 * MiB  # larger files go through /v1/uploads in parts, resumably
PART_SIZE = 64 * MiB
RECONNECTS = 5  # a dropped event stream is resumed (Last-Event-ID) this many times in a row


def _file_chunks(path: Path, chunk_size: int, bar: Bar | None) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(chunk_size):
            if bar is not None:
                bar.advance(len(chunk))
            yield chunk


class CalmClient:
    """`progress`: how shown progress looks — "bar" (tqdm), "plain" or "json" lines on stderr."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None, progress: str = "bar") -> None:  # fmt: skip
        self.base_url = base_url.rstrip("/")
        self.progress = progress
        self.http = httpx.Client(
            base_url=self.base_url, timeout=timeout, transport=transport,
            headers={"Authorization": f"Bearer {api_key}"},
        )  # fmt: skip

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> CalmClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _check(self, r: httpx.Response) -> httpx.Response:
        if r.status_code >= 400:
            raise api_error(r)
        return r

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._check(self.http.request(method, path, **kw)).json()

    # files ------------------------------------------------------------------------------
    def upload_file(
        self, path: str | Path, purpose: str, *, filename: str | None = None, show_progress: bool = False,
        resumable_above: int = RESUMABLE_ABOVE, state_dir: Path | None = None, part_size: int = PART_SIZE,
    ) -> dict[str, Any]:  # fmt: skip
        """Uploads `path`; returns the File. Up to `resumable_above` bytes it is streamed as one
        request body (never read whole into memory); larger files (any non-empty file with 0)
        go in `part_size` parts through /v1/uploads, recording the upload in
        `<file>.upload.json` (or in `state_dir`) so that the same call after a crash or a
        dropped connection resumes it (see client.resumable)."""
        path = Path(path)
        size = path.stat().st_size
        bar = make_bar(size, f"upload {path.name}", "B", self.progress) if show_progress else None
        try:
            if size > resumable_above:
                return upload_resumable(
                    self.http, path, purpose, part_size, state_file_for(path, state_dir),
                    filename=filename, progress=bar.advance if bar is not None else None,
                )  # fmt: skip
            return self._json(
                "POST", "/v1/files",
                params={"purpose": purpose, "filename": filename or path.name},
                content=_file_chunks(path, CHUNK, bar),
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                timeout=httpx.Timeout(60.0, write=None, read=600.0),
            )  # fmt: skip
        finally:
            if bar is not None:
                bar.close()

    def get_file(self, file_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/files/{file_id}")

    def list_files(self, *, after: str | None = None, limit: int = 100) -> dict[str, Any]:
        params = {"limit": limit, **({"after": after} if after else {})}
        return self._json("GET", "/v1/files", params=params)

    def iter_files(self) -> Iterator[dict[str, Any]]:
        """Every file of the caller, page by page."""
        after = None
        while True:
            page = self.list_files(after=after)
            yield from page["data"]
            if not page.get("has_more") or not page.get("next_cursor"):
                return
            after = page["next_cursor"]

    def file_finder(self) -> Callable[[str, str], str | None]:
        """(sha256, purpose) -> the id of a processed file of the caller with those bytes, or
        None. The file list is read once, on first use."""
        index: dict[tuple[str, str], str] | None = None

        def find(sha256: str, purpose: str) -> str | None:
            nonlocal index
            if index is None:
                index = {(f["sha256"], f["purpose"]): f["id"] for f in self.iter_files()
                         if f.get("status") == "processed"}
            return index.get((sha256, purpose))

        return find

    def delete_file(self, file_id: str) -> None:
        self._check(self.http.delete(f"/v1/files/{file_id}"))

    # merges -----------------------------------------------------------------------------
    def create_merge(self, body: dict[str, Any], *, idempotency_key: str | None = None
                     ) -> dict[str, Any]:  # fmt: skip
        """POST /v1/merges. An Idempotency-Key (random by default) makes retries safe."""
        key = idempotency_key or f"calm-client-{uuid.uuid4()}"
        return self._json("POST", "/v1/merges", json=body, headers={"Idempotency-Key": key})

    def get_merge(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/merges/{job_id}")

    def list_merges(self, after: str | None = None, limit: int = 20, *, status: str | list[str] | None = None,
                    metadata: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
        """A page of the caller's jobs, newest first; `status` (one or several) and `metadata`
        (every key must hold its value) filter it."""
        params: list[tuple[str, str | int]] = [("limit", limit)]
        params += [("after", after)] if after else []
        params += [("status", s) for s in ([status] if isinstance(status, str) else status or [])]
        params += [(f"metadata.{k}", v) for k, v in (metadata or {}).items()]
        return self._json("GET", "/v1/merges", params=params)

    def iter_merges(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every job of the caller matching `filters` (those of list_merges), page by page."""
        after = None
        while True:
            page = self.list_merges(after=after, limit=100, **filters)
            yield from page["data"]
            if not page.get("has_more") or not page.get("next_cursor"):
                return
            after = page["next_cursor"]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/v1/merges/{job_id}/cancel")

    def events(self, job_id: str, after: int | str = 0, limit: int = 100) -> dict[str, Any]:
        """A page of the job's events after the cursor `after` (a page's `next_cursor`)."""
        return self._json("GET", f"/v1/merges/{job_id}/events",
                          params={"after": after, "limit": limit})  # fmt: skip

    def stream_events(self, job_id: str, after: int | str = 0, *, reconnects: int = RECONNECTS,
                      wait_s: float | None = None) -> Iterator[tuple[str, dict[str, Any]]]:  # fmt: skip
        """Server-Sent Events, read with httpx-sse: yields ("progress", event) ... then ("end",
        job). A dropped connection is resumed where it stopped: the stream is opened again with
        `Last-Event-ID` (the last `id:` received), after `wait_s` (default: the server's
        `retry:`), up to `reconnects` times in a row; then the last error is raised."""
        url = f"/v1/merges/{job_id}/events/stream"
        timeout = httpx.Timeout(30.0, read=120.0)  # the server sends heartbeats
        last_id, retry_s, failures = (str(after) if after else None), (1.0 if wait_s is None else wait_s), 0
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with connect_sse(self.http, "GET", url, headers=headers, timeout=timeout) as source:
                    self._check(source.response)
                    for sse in source.iter_sse():
                        if sse.retry is not None and wait_s is None:
                            retry_s = sse.retry / 1000
                        if not sse.data:  # a `retry:`-only frame
                            continue
                        last_id, failures = sse.id or last_id, 0
                        yield sse.event, sse.json()
                        if sse.event == "end":
                            return
                raise httpx.RemoteProtocolError("the event stream ended before its `end` event")
            except (httpx.TransportError, SSEError):
                failures += 1
                if failures > reconnects:
                    raise
            time.sleep(retry_s)

    def wait(self, job_id: str, *, timeout: float | None = None, poll_s: float = 1.0
             ) -> dict[str, Any]:  # fmt: skip
        """Polls until the job has finished; returns the job. TimeoutError past `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (job := self.get_merge(job_id))["status"] not in FINISHED:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")
            time.sleep(poll_s)
        return job

    def watch(self, job_id: str, *, show: bool = True, timeout: float | None = None
              ) -> dict[str, Any]:  # fmt: skip
        """Follows the job's event stream with a progress bar; returns the finished job.
        Falls back to polling if the stream drops."""
        bar = make_bar(100, job_id, "%", self.progress) if show else None
        deadline = None if timeout is None else time.monotonic() + timeout
        seq = 0
        try:
            while deadline is None or time.monotonic() < deadline:
                try:
                    for kind, data in self.stream_events(job_id, after=seq):
                        if kind == "end":
                            return data
                        seq = max(seq, int(data.get("seq", seq)))
                        if bar is not None:
                            bar.event(data)
                except (httpx.TransportError, SSEError, ValueError):
                    time.sleep(1.0)
                if (job := self.get_merge(job_id))["status"] in FINISHED:
                    return job
            raise TimeoutError(f"job {job_id} did not finish within {timeout} s")
        finally:
            if bar is not None:
                bar.close()

    # results ----------------------------------------------------------------------------
    def download_result(self, job_id: str, out: str | Path, *, what: str = "result",
                        show_progress: bool = False) -> Path:  # fmt: skip
        """Downloads the merged checkpoint (`what="result"`) or masks (`"masks"`) to `out`.
        Resumable: bytes already in `out`.part are kept and the rest fetched with Range."""
        path = f"/v1/merges/{job_id}/result" if what == "result" else f"/v1/merges/{job_id}/masks"
        params = {"download": 1} if what == "masks" else None
        return self._download(path, Path(out), params, show_progress)

    def _download(self, url: str, out: Path, params: Any, show_progress: bool) -> Path:
        part = out.with_name(out.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self.http.stream("GET", url, params=params, headers=headers,
                              timeout=httpx.Timeout(60.0, read=600.0)) as r:  # fmt: skip
            if r.status_code == 416:  # the .part is already complete
                os.replace(part, out)
                return out
            self._check(r)
            mode = "ab" if r.status_code == 206 else "wb"
            total = int(r.headers.get("content-length", 0)) + (have if mode == "ab" else 0)
            bar = make_bar(total, f"download {out.name}", "B", self.progress) if show_progress else None
            out.parent.mkdir(parents=True, exist_ok=True)
            with part.open(mode) as f:
                for chunk in r.iter_bytes(CHUNK):
                    f.write(chunk)
                    if bar is not None:
                        bar.advance(len(chunk))
            if bar is not None:
                bar.close()
        os.replace(part, out)
        return out

    def get_report(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/merges/{job_id}/report")

    def get_masks(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/merges/{job_id}/masks")
