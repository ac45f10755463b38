"""Upkeep that needs no scheduler: each worker sweeps when it starts and after each job it runs.

- jobs left `running` by a dead worker are ended (core.jobs.requeue_or_fail_stale);
- multi-part uploads past their expiry are expired and their parts deleted
  (core.uploads.purge_expired), and part files no row names are removed once older than the
  expiry (core.uploads.purge_orphan_parts).

Every step is a conditional UPDATE or touches only old, unreferenced files, so any number of
workers may sweep at once. A failed sweep is logged and never fails the job that ran before it.
While a merge runs, a :class:`Heartbeat` keeps its job's `updated_at` fresh, so a long, silent
stage is never mistaken for a dead worker.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from core import jobs, uploads
from core.db import get_sessionmaker, make_engine, session_scope
from core.settings import get_settings
from core.storage import get_storage

log = logging.getLogger("calm.worker")


@dataclass(frozen=True)
class SweepResult:
    lost_jobs: list[str]
    expired_uploads: int
    orphan_parts: int


def sweep(sessions: sessionmaker[Session] | None = None) -> SweepResult:
    """One pass of every upkeep step, with the process settings and storage."""
    settings, storage = get_settings(), get_storage()
    with (sessions or get_sessionmaker())() as s:
        lost = jobs.requeue_or_fail_stale(s)
        expired = uploads.purge_expired(s, storage)
        orphans = uploads.purge_orphan_parts(s, storage, settings.upload_expiry_s)
    result = SweepResult(lost, expired, orphans)
    if lost or expired or orphans:
        log.warning("housekeeping: %s", asdict(result))
    return result


def safe_sweep(sessions: sessionmaker[Session] | None = None) -> SweepResult | None:
    """`sweep`, logging instead of raising (upkeep must not take a worker down)."""
    try:
        return sweep(sessions)
    except Exception:
        log.exception("housekeeping sweep failed; the next one will retry")
        return None


def sweep_at_start(**_: Any) -> None:
    """Celery `worker_ready` handler (the worker's main process, after the pool has forked):
    sweeps on a throwaway engine, so no pooled connection is inherited by later children."""
    engine = make_engine(get_settings().database_url)
    try:
        safe_sweep(sessionmaker(engine, expire_on_commit=False))
    finally:
        engine.dispose()


class Heartbeat:
    """`with Heartbeat(job_id): merge(...)` touches the running job every `interval_s`
    (default: a fifth of settings.stale_job_after_s, at most a minute) from a daemon thread."""

    def __init__(self, job_id: str, interval_s: float | None = None) -> None:
        stale = get_settings().stale_job_after_s
        self.job_id = job_id
        self.interval_s = min(60.0, stale / 5) if interval_s is None else interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                with session_scope() as s:
                    if not jobs.touch_job(s, self.job_id):
                        return  # finished, cancelled or taken over: nothing left to keep alive
            except Exception:  # a database hiccup: try again at the next beat
                log.warning("merge %s: heartbeat not recorded", self.job_id, exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
