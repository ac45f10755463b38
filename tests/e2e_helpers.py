"""Process helpers for the end-to-end tests: free ports, process-group kills, log tails and
`calm-service serve` as a supervised subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from worker_helpers import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def log_tail(path: Path, n: int = 60) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


class ServeProcess:
    """`calm-service serve` in a subprocess (its own process group) with its output in a file."""

    def __init__(self, data_dir: Path, port: int, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "service.cli", "--data-dir", str(data_dir), "serve",
               "--port", str(port)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log.open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.children: list[int] = []

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}:\n{log_tail(self.log)}")
            for line in self.log.read_text(errors="replace").splitlines():
                if line.startswith("api pid "):
                    self.children = [int(w.strip(",")) for w in line.split() if w.strip(",").isdigit()]
                    return
            time.sleep(0.3)
        raise AssertionError(f"serve not ready in {timeout_s} s:\n{log_tail(self.log)}")

    def kill(self) -> None:
        for pid in [self.proc.pid, *self.children]:
            kill_group(pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
