"""A real S3-compatible endpoint for the tests: moto's standalone server in a subprocess on a
free localhost port (one per test session). Unreachable -> skip, or fail when `CI` is set."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"CALM_S3_ACCESS_KEY_ID": "testing", "CALM_S3_SECRET_ACCESS_KEY": "testing"}


@dataclass
class S3Endpoint:
    url: str

    def env(self, cache_dir: Path, bucket: str | None = None) -> dict[str, str]:
        """CALM_* settings of the s3 backend on a fresh bucket (created on first use)."""
        return {
            "CALM_STORAGE_BACKEND": "s3", "CALM_S3_ENDPOINT_URL": self.url,
            "CALM_S3_BUCKET": bucket or f"calm-{uuid.uuid4().hex[:12]}", "CALM_S3_CREATE_BUCKET": "true",
            "CALM_STORAGE_CACHE_DIR": str(cache_dir), **KEYS,
        }  # fmt: skip


def _unavailable(message: str) -> None:
    (pytest.fail if os.environ.get("CI") else pytest.skip)(message)


@contextmanager
def moto_server(log: Path) -> Iterator[S3Endpoint]:
    from e2e_helpers import free_port, kill_group

    try:
        import moto.server  # noqa: F401
    except ImportError as e:
        _unavailable(f"moto[server] is not installed: {e}")
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url, proc, log)
        yield S3Endpoint(url)
    finally:
        kill_group(proc.pid)
        proc.wait(timeout=10)


def _wait(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _unavailable(f"moto's server exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    _unavailable(f"moto's server did not answer within {timeout_s} s")
