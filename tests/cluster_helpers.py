"""A small production cluster on one machine for the scale-out tests: PostgreSQL (own database),
the Redis broker, S3-compatible object storage (moto's server), the API (uvicorn) and N Celery
workers as separate processes. The processes share no folder: each has its own cache
directory, as workers on other machines would."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e_helpers import free_port, kill_group, log_tail
from worker_helpers import ROOT

from service.embedded import WORKER_ARGS, api_command, wait_healthy


@dataclass
class WorkerProc:
    name: str
    proc: subprocess.Popen
    log: Path

    def pool_pids(self) -> list[int]:
        """The pool processes (children) of this worker's main process."""
        out = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                out.append(int(stat.parent.name))
        return out


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]
    key: str = ""  # an API key of the test's tenant
    url: str = ""
    api: subprocess.Popen | None = None
    workers: list[WorkerProc] = field(default_factory=list)

    def _spawn(self, cmd: list[str], log: Path, extra: dict[str, str]) -> subprocess.Popen:
        return subprocess.Popen(cmd, env={**self.env, **extra}, cwd=ROOT, stdout=log.open("w"),
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def start_api(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        cache = {"CALM_STORAGE_CACHE_DIR": str(self.root / "api-cache")}
        self.api = self._spawn(api_command("127.0.0.1", port), self.root / "api.log", cache)
        wait_healthy(self.url, 120, self.api)

    def start_worker(self, name: str) -> WorkerProc:
        cmd = [sys.executable, "-m", "celery", *WORKER_ARGS, "-n", f"{name}@%h", "--loglevel", "INFO"]
        cache = {"CALM_STORAGE_CACHE_DIR": str(self.root / f"{name}-cache")}
        log = self.root / f"{name}.log"
        worker = WorkerProc(name, self._spawn(cmd, log, cache), log)
        self.workers.append(worker)
        deadline = time.monotonic() + 120
        while "ready." not in worker.log.read_text(errors="replace"):
            assert worker.proc.poll() is None and time.monotonic() < deadline, log_tail(worker.log)
            time.sleep(0.2)
        return worker

    def worker_of_pid(self, pid: int) -> WorkerProc | None:
        return next((w for w in self.workers if pid in w.pool_pids()), None)

    def logs(self) -> str:
        parts = [f"--- {w.name}\n{log_tail(w.log, 40)}" for w in self.workers]
        return "\n".join([f"--- api\n{log_tail(self.root / 'api.log', 20)}", *parts])

    def stop(self) -> None:
        for p in [self.api, *(w.proc for w in self.workers)]:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in [self.api, *(w.proc for w in self.workers)]:
            if p is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=20)
                kill_group(p.pid)


def wait_for(predicate: Any, timeout_s: float, what: str, poll_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def pid_of(worker_id: str | None) -> int:
    assert worker_id and worker_id.rsplit(":", 1)[0] == os.uname().nodename, worker_id
    return int(worker_id.rsplit(":", 1)[1])
