"""/v1/merges/{id}/events: paginated, and a live Server-Sent-Events stream.

The stream polls the database (the source of truth; any API replica can serve it), sends each
new event as `event: progress` with `id: <seq>` (so `Last-Event-ID` resumes), a comment as a
heartbeat, and `event: end` with the final job once the job has finished and every event has
been sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.deps import IdPath, SessionDep, SessionMakerDep, SettingsDep, TenantDep
from api.errors import responses
from api.schemas import EventPublic, EventsPublic, JobPublic
from core import jobs
from core.models import MergeJob

router = APIRouter(prefix="/v1/merges", tags=["events"], responses=responses(400, 401, 404, 413, 422, 429))
BATCH = 200
MAX_SEQ = 2**31 - 1  # job_events.seq is a 32-bit integer column


@router.get("/{job_id}/events", response_model=EventsPublic)
def list_job_events(
    job_id: IdPath,
    tenant: TenantDep,
    session: SessionDep,
    after_seq: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> EventsPublic:
    """Events with seq > after_seq, oldest first."""
    jobs.get_job(session, tenant, job_id)
    rows = jobs.list_events(session, job_id, after_seq, limit + 1)
    data = [EventPublic.of(e) for e in rows[:limit]]
    last = data[-1].seq if data else after_seq
    return EventsPublic(data=data, has_more=len(rows) > limit, next_after_seq=last)


def _poll(
    factory: sessionmaker[Session], job_id: str, after: int
) -> tuple[MergeJob | None, list[EventPublic]]:
    with factory() as session:
        job = session.get(MergeJob, job_id)  # status first: a final event is then always seen
        if job is None:
            return None, []
        events = [EventPublic.of(e) for e in jobs.list_events(session, job_id, after, BATCH)]
        session.expunge(job)
        return job, events


def _sse(event: str, data: str, ident: int | None = None) -> str:
    head = f"id: {ident}\n" if ident is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n"


async def _stream(
    factory: sessionmaker[Session], job_id: str, after: int, poll_s: float, heartbeat_s: float
) -> AsyncIterator[str]:
    beat = time.monotonic()
    yield "retry: 2000\n\n"
    while True:
        job, events = await run_in_threadpool(_poll, factory, job_id, after)
        if job is None:
            return
        for e in events:
            yield _sse("progress", e.model_dump_json(), e.seq)
            after = e.seq
        if job.finished and len(events) < BATCH:
            yield _sse("end", JobPublic.of(job).model_dump_json())
            return
        if events:
            beat = time.monotonic()
        elif time.monotonic() - beat >= heartbeat_s:
            yield ": keep-alive\n\n"
            beat = time.monotonic()
        await asyncio.sleep(poll_s)


@router.get(
    "/{job_id}/events/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
def stream_job_events(
    job_id: IdPath,
    tenant: TenantDep,
    session: SessionDep,
    factory: SessionMakerDep,
    settings: SettingsDep,
    after_seq: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    last_event_id: Annotated[
        str | None, Header(pattern="^[0-9]{1,40}$", description="The last `id:` received.")
    ] = None,
) -> StreamingResponse:
    """Server-Sent Events: `progress` events (data = an event) until the job finishes, then
    one `end` event (data = the job). Resume with `Last-Event-ID` or `?after_seq=`."""
    jobs.get_job(session, tenant, job_id)
    if last_event_id:  # beyond any seq means "nothing newer": clamp to what the column holds
        after_seq = max(after_seq, min(int(last_event_id), MAX_SEQ))
    body = _stream(factory, job_id, after_seq, settings.sse_poll_interval_s, settings.sse_heartbeat_s)
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
