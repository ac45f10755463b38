"""What happens to a running job when its worker process dies or is asked to stop.

**A pool process dies** (kill -9, out of memory): Celery's main process sees the child go and
fails the task with WorkerLostError. `release_lost_run` (a `task_failure` handler, in the main
process) ends that run at once: the job is requeued as its next attempt and re-published, or
fails `worker_lost` after the last attempt. It only touches a job still `running` under a
worker id of this host whose process is gone, so a job another worker has taken over is safe.
(When the whole machine dies, the periodic reaper does the same after stale_job_after_s.)

**SIGTERM** (docker stop, a deploy, Ctrl-C on `calm-service serve`): Celery's warm shutdown
stops taking messages and waits for the running task. `ask_children_to_hand_back` (a
`worker_shutting_down` handler, main process) sends SIGUSR2 to the pool processes running a
job; from then on a job has settings.worker_shutdown_grace_s to finish. Past that, the merge's
next cancellation check stops it and the runner hands the job back (queued again, re-published,
the attempt not counted), so the process exits promptly and no job is left `running`.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

from celery.exceptions import WorkerLostError
from sqlalchemy import NullPool, create_engine
from sqlalchemy.orm import Session

from core import outbox, stale_jobs
from core.db import make_engine
from core.models import MergeJob
from core.queue import MERGE_TASK, QueueUnavailable
from core.settings import get_settings

log = logging.getLogger("calm.worker")
HANDBACK_SIGNAL = signal.SIGUSR2
_handback_at: float | None = None  # monotonic deadline, set in a pool process on shutdown


def worker_name() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"


def process_gone(worker_id: str | None) -> bool:
    """True when `worker_id` ("host:pid") names a process of this host that no longer runs."""
    host, _, pid = (worker_id or "").rpartition(":")
    if host != os.uname().nodename or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _main_process_engine() -> Any:
    """No pooled connection in the main process: pool processes forked later must not
    inherit one."""
    url = get_settings().database_url
    return make_engine(url) if url.startswith("sqlite") else create_engine(url, poolclass=NullPool)


def release_lost_run(job_id: str, reason: str) -> str | None:
    """Requeue (and publish) or fail the job whose pool process died; see the module doc."""
    engine = _main_process_engine()
    try:
        with Session(engine) as s:
            job = s.get(MergeJob, job_id)
            worker_id = job.worker_id if job is not None else None
            if not process_gone(worker_id):
                return None
            fence = MergeJob.worker_id == worker_id
            outcome = stale_jobs.requeue_or_fail_lost(s, job_id, reason, fence=fence)
            if outcome == stale_jobs.REQUEUED:
                try:
                    outbox.publish_job(s, job_id)
                except QueueUnavailable:
                    log.warning("merge %s requeued; the broker is down, the outbox will publish it", job_id)
        log.warning("merge %s: %s; the run was %s", job_id, reason, outcome)
        return outcome
    finally:
        engine.dispose()


def on_task_failure(sender: Any = None, task_id: str | None = None, exception: BaseException | None = None,
                    args: Any = None, **_: Any) -> None:  # fmt: skip
    """`task_failure` handler: a merge whose pool process died is released at once."""
    if getattr(sender, "name", None) != MERGE_TASK or not isinstance(exception, WorkerLostError) or not args:
        return
    try:
        release_lost_run(str(args[0]), f"its worker process died ({exception})")
    except Exception:  # the reaper will get to it
        log.exception("merge %s: could not release the lost run", args[0])


def ask_children_to_hand_back(**_: Any) -> None:
    """`worker_shutting_down` handler (main process): signal every pool process with a job."""
    from celery.worker import state

    for request in list(state.active_requests):
        pid = getattr(request, "worker_pid", None)
        if pid and pid != os.getpid():
            try:
                os.kill(pid, HANDBACK_SIGNAL)
            except ProcessLookupError:
                continue
            log.warning("shutting down: merge %s gets %gs to finish, then is handed back",
                        request.args[0] if request.args else "?", get_settings().worker_shutdown_grace_s)


def _on_handback_signal(_signum: int, _frame: Any) -> None:
    global _handback_at
    if _handback_at is None:
        _handback_at = time.monotonic() + get_settings().worker_shutdown_grace_s


def install_handback_handler(**_: Any) -> None:
    """`worker_process_init` handler (each pool process)."""
    signal.signal(HANDBACK_SIGNAL, _on_handback_signal)


def shutdown_requested() -> bool:
    return _handback_at is not None


def handback_due() -> bool:
    """True once a shutdown was requested and its grace period has passed."""
    return _handback_at is not None and time.monotonic() >= _handback_at


def connect() -> None:
    from celery.signals import task_failure, worker_process_init, worker_shutting_down

    task_failure.connect(on_task_failure, weak=False)
    worker_shutting_down.connect(ask_children_to_hand_back, weak=False)
    worker_process_init.connect(install_handback_handler, weak=False)
