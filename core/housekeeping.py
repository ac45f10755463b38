"""The periodic sweep that keeps every job moving, and the loop that runs it by itself.

One pass (`sweep`):
1. the reaper: `running` jobs silent for settings.stale_job_after_s lost their worker; each
   is requeued as its next attempt (and published at once) or, after the last attempt, failed
   with `worker_lost` (core.stale_jobs);
2. the outbox: `queued` jobs whose message was never confirmed published are published
   (core.outbox);
3. uploads: multi-part uploads past their expiry are expired and their parts deleted, and part
   blobs no row names are removed once older than the expiry (core.uploads).

Who runs it: in production Celery beat sends `calm.housekeeping` every settings.reaper_period_s
to the `housekeeping` queue (worker.beat); in the embedded service `PeriodicSweeper` runs it
in the `calm-service serve` process. Workers also sweep when they start and after each job.
Every step is a conditional UPDATE or touches only old, unreferenced blobs, so any number of
sweepers may run at once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from core import outbox, stale_jobs, uploads
from core.db import get_sessionmaker
from core.queue import QueueUnavailable
from core.settings import get_settings
from core.storage import Storage, get_storage

log = logging.getLogger("calm.housekeeping")


@dataclass(frozen=True)
class SweepResult:
    lost_jobs: dict[str, str] = field(default_factory=dict)  # job id -> requeued | failed | cancelled
    published: list[str] = field(default_factory=list)
    expired_uploads: int = 0
    orphan_parts: int = 0


def reap_and_publish(session: Session) -> tuple[dict[str, str], list[str]]:
    """Steps 1-2: returns ({lost job: outcome}, [jobs published])."""
    lost = stale_jobs.requeue_or_fail_stale(session)
    published = []
    for job_id, outcome in lost.items():
        if outcome == stale_jobs.REQUEUED:
            try:
                outbox.publish_job(session, job_id)
                published.append(job_id)
            except QueueUnavailable:
                log.warning("requeued %s; the broker is down, the outbox will publish it", job_id)
    published += outbox.publish_pending(session)
    return lost, published


def sweep(sessions: sessionmaker[Session] | None = None, storage: Storage | None = None) -> SweepResult:
    """One pass of every step, with the process settings and storage."""
    settings, storage = get_settings(), storage or get_storage()
    with (sessions or get_sessionmaker())() as s:
        lost, published = reap_and_publish(s)
        expired = uploads.purge_expired(s, storage)
        orphans = uploads.purge_orphan_parts(s, storage, settings.upload_expiry_s)
    result = SweepResult(lost, published, expired, orphans)
    if lost or published or expired or orphans:
        log.warning("housekeeping: %s", asdict(result))
    return result


def safe_sweep(sessions: sessionmaker[Session] | None = None) -> SweepResult | None:
    """`sweep`, logging instead of raising (upkeep must not take its host process down)."""
    try:
        return sweep(sessions)
    except Exception:
        log.exception("housekeeping sweep failed; the next one will retry")
        return None


class PeriodicSweeper:
    """`with PeriodicSweeper(): ...` sweeps every `interval_s` (default
    settings.reaper_period_s) from a daemon thread, the first time at once."""

    def __init__(self, interval_s: float | None = None,
                 sessions: sessionmaker[Session] | None = None) -> None:  # fmt: skip
        self.interval_s = get_settings().reaper_period_s if interval_s is None else interval_s
        self.sessions = sessions
        self.passes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="calm-sweeper", daemon=True)

    def _run(self) -> None:
        while True:
            safe_sweep(self.sessions)
            self.passes += 1
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> PeriodicSweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def __enter__(self) -> PeriodicSweeper:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
