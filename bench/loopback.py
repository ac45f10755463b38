"""Helpers of the API load benchmark: the raw loopback baseline, lean HTTP transfers, request
timing and API memory.

The baseline is the least work any HTTP upload or download of the same bytes must do on this
machine: the file sent over a TCP connection on 127.0.0.1 (sendfile) and, for an upload, written
to a file in the API's storage folder and fsynced; for a download, read from that folder and
received in memory chunks. The API's throughput is quoted as a ratio to it, measured in the
same run, so the numbers mean the same on a laptop and on a server.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

CHUNK = 1 << 20


def _serve_once(handler: object) -> tuple[socket.socket, threading.Thread]:
    srv = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=lambda: handler(srv.accept()[0]), daemon=True)  # type: ignore[operator]
    thread.start()
    return srv, thread


def raw_upload_s(src: Path, dest: Path) -> float:
    """Seconds to send `src` over loopback TCP into `dest` (written and fsynced)."""

    def receive(conn: socket.socket) -> None:
        with conn, open(dest, "wb") as f:
            while data := conn.recv(CHUNK):
                f.write(data)
            f.flush()
            os.fsync(f.fileno())

    srv, thread = _serve_once(receive)
    start = time.perf_counter()
    with socket.create_connection(srv.getsockname()) as c, open(src, "rb") as f:
        c.sendfile(f)
        c.shutdown(socket.SHUT_WR)
        thread.join()
    took = time.perf_counter() - start
    srv.close()
    dest.unlink()
    return took


def raw_download_s(src: Path) -> float:
    """Seconds to receive `src` over loopback TCP (sent with sendfile) in memory chunks."""

    def send(conn: socket.socket) -> None:
        with conn, open(src, "rb") as f:
            conn.sendfile(f)

    srv, _ = _serve_once(send)
    start = time.perf_counter()
    with socket.create_connection(srv.getsockname()) as c:
        while c.recv(CHUNK):
            pass
    took = time.perf_counter() - start
    srv.close()
    return took


def rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    """A process's resident memory (VmRSS) or its peak so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(field_name)


@dataclass
class Timings:
    """Latencies per operation kind and the errors seen (thread-safe)."""

    ms: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, op: str, seconds: float) -> None:
        with self.lock:
            self.ms.setdefault(op, []).append(seconds * 1000)

    def error(self, op: str, what: str) -> None:
        with self.lock:
            self.errors.append(f"{op}: {what}")

    def summary(self) -> dict[str, dict[str, float]]:
        return {op: {"n": len(v), "p50_ms": round(percentile(v, 50), 1),
                     "p99_ms": round(percentile(v, 99), 1)} for op, v in sorted(self.ms.items())}  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if q < 100 else max(values)


class RssSampler:
    """Samples a process's RSS every `every_s` from a thread; `peak` is the largest seen."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        self.pid, self.every_s, self.peak = pid, every_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


class Transfers:
    """Uploads and downloads with http.client (1 MiB socket writes, `readinto` a reused
    buffer): the client's own overhead stays small, so the numbers are the API's."""

    def __init__(self, url: str, api_key: str) -> None:
        parsed = urlsplit(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.headers = {"Authorization": f"Bearer {api_key}"}

    def _conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=300, blocksize=CHUNK)

    def upload(self, path: Path, t: Timings) -> str | None:
        start, conn = time.perf_counter(), self._conn()
        try:
            with open(path, "rb") as f:
                headers = {**self.headers, "Content-Type": "application/octet-stream",
                           "Content-Length": str(path.stat().st_size)}  # fmt: skip
                conn.request("POST", f"/v1/files?purpose=checkpoint&filename={path.name}", f, headers)
                r = conn.getresponse()
                body = r.read()
        finally:
            conn.close()
        t.add("upload", time.perf_counter() - start)
        if r.status != 201:
            t.error("upload", f"{r.status} {body[:200]!r}")
            return None
        return json.loads(body)["id"]

    def download(self, file_id: str, size: int, t: Timings) -> None:
        start, conn, got, buf = time.perf_counter(), self._conn(), 0, bytearray(CHUNK)
        try:
            conn.request("GET", f"/v1/files/{file_id}/content", headers=self.headers)
            r = conn.getresponse()
            while n := r.readinto(buf):
                got += n
        finally:
            conn.close()
        t.add("download", time.perf_counter() - start)
        if r.status != 200 or got != size:
            t.error("download", f"{r.status}, {got} of {size} bytes")
