"""Per-tenant quotas and rate limits; each refusal is a 429 with `Retry-After`.

- requests per second: a token bucket per tenant (`rate_limit_per_s` sustained, `rate_limit_burst`
  at once), kept in the API process (N replicas allow N times the rate);
- unfinished merge jobs (`max_active_jobs`): checked when a job is created;
- stored bytes (`max_stored_bytes`): files plus the declared size of pending multi-part uploads,
  checked before an upload is read (from its declared length) and again before its row is made.
A tenant row's non-null `max_active_jobs` / `max_stored_bytes` / `rate_limit_per_s` override the
settings (`calm-service set-quota`).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.errors import ServiceError
from core.models import FINISHED_STATUSES, FileObject, MergeJob, Tenant, Upload
from core.settings import Settings


@dataclass(frozen=True)
class TenantLimits:
    rate_per_s: float
    burst: int
    active_jobs: int
    stored_bytes: int


def tenant_limits(session: Session, tenant_id: str, settings: Settings) -> TenantLimits:
    row = session.get(Tenant, tenant_id)
    return TenantLimits(
        rate_per_s=(row.rate_limit_per_s if row and row.rate_limit_per_s else settings.rate_limit_per_s),
        burst=settings.rate_limit_burst,
        active_jobs=(row.max_active_jobs if row and row.max_active_jobs else settings.max_active_jobs),
        stored_bytes=(row.max_stored_bytes if row and row.max_stored_bytes else settings.max_stored_bytes),
    )


def too_many(code: str, message: str, retry_after_s: float) -> ServiceError:
    return ServiceError(code, message, 429, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})


def check_job_quota(session: Session, tenant_id: str, settings: Settings) -> None:
    limit = tenant_limits(session, tenant_id, settings).active_jobs
    active = session.scalar(
        select(func.count())
        .select_from(MergeJob)
        .where(MergeJob.tenant_id == tenant_id, MergeJob.status.not_in(FINISHED_STATUSES))
    )
    if (active or 0) >= limit:
        raise too_many(
            "job_quota_exceeded",
            f"you have {active} unfinished merge jobs (at most {limit}); wait for one to finish "
            "or cancel one",
            settings.quota_retry_after_s,
        )


def stored_bytes(session: Session, tenant_id: str) -> int:
    files = select(func.coalesce(func.sum(FileObject.bytes), 0)).where(FileObject.tenant_id == tenant_id)
    pending = select(func.coalesce(func.sum(Upload.bytes), 0)).where(
        Upload.tenant_id == tenant_id, Upload.status == "pending"
    )
    return int(session.scalar(files) or 0) + int(session.scalar(pending) or 0)


def check_storage_quota(session: Session, tenant_id: str, settings: Settings, adding: int) -> None:
    limit = tenant_limits(session, tenant_id, settings).stored_bytes
    used = stored_bytes(session, tenant_id)
    if used + adding > limit:
        raise too_many(
            "storage_quota_exceeded",
            f"this would store {used + adding} bytes; your quota is {limit} (files plus pending "
            "uploads); delete files or cancel uploads first",
            settings.quota_retry_after_s,
        )


class RateLimiter:
    """Token buckets per tenant: `take` returns 0 when a request may go, else the seconds until
    one may."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)

    def take(self, tenant_id: str, rate_per_s: float, burst: int) -> float:
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(tenant_id, (float(burst), now))
            tokens = min(float(burst), tokens + (now - at) * rate_per_s)
            if tokens >= 1.0:
                self._buckets[tenant_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[tenant_id] = (tokens, now)
            return (1.0 - tokens) / rate_per_s
