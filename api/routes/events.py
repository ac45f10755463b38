"""/v1/merges/{id}/events: paginated, and a live Server-Sent-Events stream.

Both take the list cursor of every other list: `after` (an event `seq`; a page's `next_cursor`).
The stream is FastAPI's `EventSourceResponse` (its event schema is in the OpenAPI document): it
polls the database (the source of truth; any API replica can serve it), sends each new event as
`event: progress` with `id: <seq>` (so `Last-Event-ID` resumes), a comment as a heartbeat, and
`event: end` with the final job once the job has finished and every event has been sent. Every
check (the job is the caller's, the cursor and Last-Event-ID are numbers in range) is made before
the stream starts, so a refusal is a JSON error, never a dropped connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.deps import IdPath, SessionDep, SessionMakerDep, SettingsDep, TenantDep
from api.errors import responses
from api.schemas import EventPublic, EventsPublic, JobPublic
from core import jobs
from core.errors import ServiceError
from core.models import MergeJob

ERRORS = (400, 401, 404, 413, 422, 429)
router = APIRouter(prefix="/v1/merges", tags=["events"], responses=responses(*ERRORS))
BATCH = 200
MAX_SEQ = 2**31 - 1  # job_events.seq is a 32-bit integer column
RETRY_MS = 2000


def event_cursor(
    after: Annotated[int | None, Query(
        ge=0, le=MAX_SEQ, description="`next_cursor` of the previous page (an event `seq`): "
        "only events after it.")] = None,
    after_seq: Annotated[int | None, Query(
        ge=0, le=MAX_SEQ, deprecated=True, description="Deprecated alias of `after`.")] = None,
) -> int:  # fmt: skip
    """The seq to start after (0: from the first event)."""
    if after is not None and after_seq is not None and after != after_seq:
        raise ServiceError(
            "invalid_request", "give `after` only (`after_seq` is its deprecated alias)", 422
        )
    return after if after is not None else after_seq or 0


EventCursor = Annotated[int, Depends(event_cursor)]


@router.get("/{job_id}/events", response_model=EventsPublic)
def list_job_events(
    job_id: IdPath,
    tenant: TenantDep,
    session: SessionDep,
    after: EventCursor,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> EventsPublic:
    """The job's events with seq > `after`, oldest first; pass `next_cursor` as `after` for the
    next page, or later for the events added since."""
    jobs.get_job(session, tenant, job_id)
    rows = jobs.list_events(session, job_id, after, limit + 1)
    data = [EventPublic.of(e) for e in rows[:limit]]
    last = data[-1].seq if data else after
    return EventsPublic(data=data, has_more=len(rows) > limit, next_cursor=str(last), next_after_seq=last)


def stream_start(
    job_id: IdPath,
    tenant: TenantDep,
    factory: SessionMakerDep,
    after: EventCursor,
    last_event_id: Annotated[str | None, Header(
        pattern="^[0-9]{1,40}$", description="The last `id:` received (a browser's EventSource "
        "sends it on reconnecting); wins over `after` when later.")] = None,
) -> int:  # fmt: skip
    """The seq the stream starts after, once the job is known to be the caller's (404 before
    any byte is streamed). A short session: the stream itself holds no connection."""
    with factory() as session:
        jobs.get_job(session, tenant, job_id)
    if last_event_id:  # beyond any seq means "nothing newer": clamp to what the column holds
        after = max(after, min(int(last_event_id), MAX_SEQ))
    return after


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


def _item_schema(event: str, model: str, description: str, with_id: bool) -> dict[str, Any]:
    data = {"type": "string", "contentMediaType": "application/json",
            "contentSchema": {"$ref": f"#/components/schemas/{model}"}}  # fmt: skip
    props: dict[str, Any] = {"event": {"const": event}, "data": data}
    if with_id:
        props["id"] = {"type": "string", "description": "The event's seq: a cursor for `after` "
                       "and what `Last-Event-ID` resumes after."}  # fmt: skip
    return {"type": "object", "description": description, "properties": props,
            "required": ["event", "data", *(["id"] if with_id else [])]}  # fmt: skip


STREAM_ITEMS = {"oneOf": [
    _item_schema("progress", "EventPublic", "A job event, oldest first.", True),
    _item_schema("end", "JobPublic", "The finished job; the last event of the stream.", False),
]}  # fmt: skip


@router.get(
    "/{job_id}/events/stream",
    response_class=EventSourceResponse,
    responses={200: {"description": "`progress` events, then one `end` event.",
                     "content": {"text/event-stream": {"itemSchema": STREAM_ITEMS}}},
               **responses(*ERRORS, json_content=True)},  # errors are JSON, sent before any event
)  # fmt: skip
async def stream_job_events(
    job_id: IdPath,
    after: Annotated[int, Depends(stream_start)],
    factory: SessionMakerDep,
    settings: SettingsDep,
) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events: `progress` events (`id:` its seq, data = an event) until the job
    finishes, then one `end` event (data = the job). Resume with `Last-Event-ID` (what
    EventSource and `httpx-sse` clients send) or `?after=<seq>`."""
    beat = time.monotonic()
    yield ServerSentEvent(retry=RETRY_MS)
    while True:
        job, events = await run_in_threadpool(_poll, factory, job_id, after)
        if job is None:  # deleted meanwhile
            return
        for e in events:
            yield ServerSentEvent(event="progress", id=str(e.seq), raw_data=e.model_dump_json())
            after = e.seq
        if job.finished and len(events) < BATCH:
            yield ServerSentEvent(event="end", raw_data=JobPublic.of(job).model_dump_json())
            return
        if events:
            beat = time.monotonic()
        elif time.monotonic() - beat >= settings.sse_heartbeat_s:
            yield ServerSentEvent(comment="keep-alive")
            beat = time.monotonic()
        await asyncio.sleep(settings.sse_poll_interval_s)
