"""The embedded default (`calm-service serve`: SQLite + filesystem broker + local storage) on
an idle service: kill -9 of the worker's pool process during the mask stage -> the job is
retried as attempt 2 and succeeds, with nobody calling `reap-jobs` (the issue's report)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cluster_helpers import pid_of, wait_for
from e2e_helpers import ServeProcess, log_tail
from worker_helpers import ROOT, suite_spec

from client import CalmClient
from client.spec import job_body

pytestmark = pytest.mark.timeout(600)


def test_kill_9_mid_job_on_the_embedded_service(serve: ServeProcess, suite: Any, tmp_path: Path,
                                                child_env: dict[str, str]) -> None:  # fmt: skip
    made = subprocess.run(
        [sys.executable, "-m", "service.cli", "--data-dir", str(tmp_path / "var"), "create-tenant", "kill"],
        env=child_env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    key = re.search(r"API key \(shown once, store it now\): (\S+)", made.stdout).group(1)
    options = {"epochs": 20, "lr_grid": [1.0], "batch_size": 32}
    spec = suite_spec(suite, seed=8, options=options, evaluate=False)
    with CalmClient(serve.url, key) as c:
        job_id = c.create_merge(job_body(spec, lambda p, purpose: c.upload_file(p, purpose)["id"]))["id"]

        def stage() -> dict[str, Any] | None:
            job = c.get_merge(job_id)
            return job if job["status"] == "running" and (job["stage"] or "").startswith("mask:") else None

        wait_for(stage, 240, "the mask stage")
        first = [e["message"] for e in c.events(job_id)["data"] if " claimed by " in e["message"]]
        killed_at = time.monotonic()
        os.kill(pid_of(first[0].rsplit(" ", 1)[1]), signal.SIGKILL)
        job = c.wait(job_id, timeout=300, poll_s=0.5)
        took = time.monotonic() - killed_at
        got = (job["status"], job["attempt"], job["max_attempts"])
        assert got == ("succeeded", 2, 2), log_tail(serve.log)
        messages = [e["message"] for e in c.events(job_id, limit=500)["data"]]
    assert any("attempt 1 of 2 lost: its worker process died" in m for m in messages)
    assert sum(" claimed by " in m for m in messages) == 2
    print(f"\nembedded kill -9: succeeded as attempt 2, {took:.1f} s after the kill")

    # The whole worker dies (its main process too): `serve` restarts it instead of stopping.
    api_pid, worker_pid, _ = serve.children
    os.kill(worker_pid, signal.SIGKILL)
    wait_for(lambda: "worker exited with code -9; restarting it" in serve.log.read_text(), 30, "a restart")
    wait_for(lambda: serve.log.read_text().count(" ready.") >= 2, 120, "the new worker")
    assert serve.proc.poll() is None and Path(f"/proc/{api_pid}").exists()
    serve.proc.send_signal(signal.SIGINT)  # stops the restarted worker too (the fixture knows only the first)
    assert serve.proc.wait(timeout=120) == 0, log_tail(serve.log)
