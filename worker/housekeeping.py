"""Upkeep in a merge worker: a sweep when it starts and after each job it runs (the periodic
sweep itself is core.housekeeping, run by Celery beat or the embedded service), and the
heartbeat that keeps a running job from being taken for one whose worker died.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy.orm import sessionmaker

from core import jobs
from core.db import make_engine, session_scope
from core.housekeeping import SweepResult, safe_sweep, sweep
from core.settings import get_settings

__all__ = ["Heartbeat", "SweepResult", "safe_sweep", "sweep", "sweep_at_start"]
log = logging.getLogger("calm.worker")


def sweep_at_start(**_: Any) -> None:
    """Celery `worker_ready` handler (the worker's main process, after the pool has forked):
    sweeps on a throwaway engine, so no pooled connection is inherited by later children."""
    engine = make_engine(get_settings().database_url)
    try:
        safe_sweep(sessionmaker(engine, expire_on_commit=False))
    finally:
        engine.dispose()


class Heartbeat:
    """`with Heartbeat(job_id, attempt=n): merge(...)` touches the running job every
    `interval_s` (default: a fifth of settings.stale_job_after_s, at most a minute) from a
    daemon thread, for as long as the job is still on attempt `n`."""

    def __init__(self, job_id: str, interval_s: float | None = None, attempt: int | None = None) -> None:
        stale = get_settings().stale_job_after_s
        self.job_id, self.attempt = job_id, attempt
        self.interval_s = min(60.0, stale / 5) if interval_s is None else interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                with session_scope() as s:
                    if not jobs.touch_job(s, self.job_id, self.attempt):
                        return  # finished, cancelled or taken over: nothing left to keep alive
            except Exception:  # a database hiccup: try again at the next beat
                log.warning("merge %s: heartbeat not recorded", self.job_id, exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
