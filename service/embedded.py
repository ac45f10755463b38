"""The embedded service: the API (uvicorn), one Celery worker and the periodic sweeper (the
reaper + outbox, `calm-service sweeper`) as child processes of one command, on SQLite, local
storage and kombu's filesystem broker under one data directory.

Same code as production: the worker is `celery -A worker.celery_app worker`, the API is
`uvicorn api.main:create_app`, the sweeper runs core.housekeeping.sweep as Celery beat does;
only the CALM_* settings differ. A worker or sweeper that dies is restarted (its job is
released by the reaper and retried); the API dying stops the service. No torch here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parent.parent
# The API process streams many MiB-sized buffers from threads: glibc's per-thread arenas and
# its rising mmap threshold would keep each freed buffer's pages. Two arenas and a fixed 1 MiB
# threshold (big buffers are mmapped and returned at once) keep its RSS flat under load
# (bench.api_load); the Dockerfile's api image sets the same.
API_MALLOC_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
WORKER_ARGS = ("-A", "worker.celery_app", "worker", "-Q", "merges", "--concurrency", "1",
               "--without-gossip", "--without-mingle", "--without-heartbeat")  # fmt: skip


def embedded_env(data_dir: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the embedded processes: CALM_* defaults under `data_dir`, unless
    the caller's environment already sets them."""
    env = dict(os.environ if base is None else base)
    data_dir = data_dir.resolve()
    defaults = {
        "CALM_DATABASE_URL": f"sqlite:///{data_dir / 'calm.db'}",
        "CALM_STORAGE_DIR": str(data_dir / "storage"),
        "CALM_BROKER_URL": "filesystem://",
        "CALM_BROKER_DIR": str(data_dir / "broker"),
    }
    for key, value in defaults.items():
        env.setdefault(key, value)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def api_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory",
            "--host", host, "--port", str(port), "--log-level", "warning"]  # fmt: skip


def worker_command(loglevel: str = "INFO") -> list[str]:
    return [sys.executable, "-m", "celery", *WORKER_ARGS, "--loglevel", loglevel]


def sweeper_command() -> list[str]:
    return [sys.executable, "-m", "service.cli", "sweeper"]


def wait_healthy(url: str, timeout_s: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Polls `url`/healthz until it answers 200; RuntimeError on timeout or if `proc` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the API process exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url.rstrip('/')}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} was not healthy within {timeout_s:.0f} s")


def stop(proc: subprocess.Popen | None, grace_s: float = 15.0) -> None:
    """SIGTERM (uvicorn: graceful; Celery: warm shutdown), then SIGKILL to the child's whole
    process group (Celery's pool children too) after `grace_s`. Children run in their own
    session (see EmbeddedService._spawn), so this kills nothing else."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # pool children left behind, if any
    proc.wait(timeout=10)


class EmbeddedService:
    """`with EmbeddedService(Path("var"), port=8000) as svc: ...` runs API + worker.

    `log` (a file) receives both processes' output; None lets them write to this terminal.
    """

    def __init__(self, data_dir: Path, host: str = "127.0.0.1", port: int = 8000,
                 worker: bool = True, log: IO[str] | None = None,
                 env: Mapping[str, str] | None = None) -> None:  # fmt: skip
        self.data_dir = Path(data_dir)
        self.host, self.port, self.with_worker, self.log = host, port, worker, log
        self.env = embedded_env(self.data_dir, env)
        self.api: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.sweeper: subprocess.Popen | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _spawn(self, cmd: list[str], extra_env: Mapping[str, str] | None = None) -> subprocess.Popen:
        out = self.log if self.log is not None else None
        env = {**(extra_env or {}), **self.env}  # the caller's environment wins
        return subprocess.Popen(
            cmd, env=env, cwd=ROOT, start_new_session=True,
            stdout=out, stderr=subprocess.STDOUT if out is not None else None,
        )  # fmt: skip

    def migrate(self) -> None:
        """Runs the migrations in a child process (so this process's settings stay as they are)."""
        code = "from core.db import migrate; migrate()"
        subprocess.run([sys.executable, "-c", code], env=self.env, check=True, timeout=300,
                       cwd=ROOT)  # fmt: skip

    def start(self, timeout_s: float = 90.0) -> EmbeddedService:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.migrate()
        if self.with_worker:
            self.worker = self._spawn(worker_command())
        self.sweeper = self._spawn(sweeper_command())
        self.api = self._spawn(api_command(self.host, self.port), API_MALLOC_ENV)
        try:
            wait_healthy(self.url, timeout_s, self.api)
        except BaseException:
            self.stop()
            raise
        return self

    def failed(self) -> str | None:
        """Which child has died, if any."""
        for name, proc in (("api", self.api), ("worker", self.worker), ("sweeper", self.sweeper)):
            if proc is not None and proc.poll() is not None:
                return f"{name} exited with code {proc.returncode}"
        return None

    def restart_dead(self) -> list[str]:
        """Restarts a worker or sweeper that has exited; returns their names."""
        restarted = []
        if self.worker is not None and self.worker.poll() is not None:
            stop(self.worker)  # its pool processes, if any survived
            self.worker = self._spawn(worker_command())
            restarted.append("worker")
        if self.sweeper is not None and self.sweeper.poll() is not None:
            self.sweeper = self._spawn(sweeper_command())
            restarted.append("sweeper")
        self.restarts += len(restarted)
        return restarted

    def stop(self) -> None:
        """The worker first (a running job is handed back), then the API and the sweeper."""
        grace = float(self.env.get("CALM_WORKER_SHUTDOWN_GRACE_S", "30")) + 15
        stop(self.worker, grace_s=grace)
        stop(self.api)
        stop(self.sweeper)

    def __enter__(self) -> EmbeddedService:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
