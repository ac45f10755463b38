"""/v1/merges: create (validated, idempotent), list, get, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Request, Response

from api.deps import Cursor, IdPath, SessionDep, SettingsDep, TenantDep
from api.errors import responses
from api.examples import MERGE
from api.query_params import prefixes
from api.schemas import JobCreate, JobPublic, JobsPublic, JobStatus, JobSummary, MergePlan
from core import jobs
from core.errors import ServiceError
from core.job_filters import METADATA_PREFIX, job_filters, metadata_filter
from core.models import MergeJob
from core.outbox import publish_job
from core.pagination import page
from core.queue import QueueUnavailable

router = APIRouter(prefix="/v1/merges", tags=["merges"], responses=responses(401, 413, 422, 429))


@router.post(
    "",
    status_code=201,
    response_model=JobPublic | MergePlan,
    responses={200: {"model": JobPublic | MergePlan,
                     "description": "With `dry_run`: the resolved plan (no job is created). Or an "
                                    "Idempotency-Key replay: the earlier job."},
               **responses(400, 404, 409, 503)},
)  # fmt: skip
def create_merge(
    body: Annotated[JobCreate, Body(openapi_examples=MERGE)],
    response: Response,
    tenant: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JobPublic | MergePlan:
    """Create a merge job. The body is the merge spec of `calm-merge` and `calm-client`
    (docs/spec.md) with file ids for paths. Every referenced file must be the caller's, of the
    right purpose and processed; task checkpoints must match the base's tensor table; options
    must fit the method and the tasks. Only then is the job queued. `"dry_run": true` makes
    every check and returns the resolved plan without creating a job (200). With
    `Idempotency-Key`, repeating the same body returns the same job (200); a different body
    under the same key is 409 idempotency_conflict."""
    if body.dry_run:
        response.status_code = 200
        return MergePlan(**jobs.plan_job(session, tenant, body, settings=settings))
    job, created = jobs.create_job(session, tenant, body, idempotency_key=idempotency_key, settings=settings)
    if not created:
        response.status_code = 200
        return JobPublic.of(job)
    try:
        publish_job(session, job.id, settings)  # the sweeper publishes it if this process dies first
    except QueueUnavailable:
        jobs.discard_job(session, job.id)  # nothing half-made: a retry starts afresh
        raise ServiceError(
            "queue_unavailable", "the job queue is unreachable; no job was created, retry later", 503
        ) from None
    return JobPublic.of(job)


@router.get("", response_model=JobsPublic, responses=responses(400), openapi_extra=prefixes(METADATA_PREFIX))
def list_merges(
    request: Request,
    tenant: TenantDep,
    session: SessionDep,
    after: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    status: Annotated[list[JobStatus] | None, Query(
        description="Only jobs in these statuses (repeat it: `?status=queued&status=running`).")] = None,
) -> JobsPublic:  # fmt: skip
    """The caller's merge jobs (summaries, without the request body), newest first; pass
    `next_cursor` as `after` for the next page (with the same filters).

    Filters: `status` (one or several), and `metadata.<key>=<value>` for the labels given in
    the request's `metadata` (exact string match; several keys must all match, a key repeated
    matches any of its values): `?metadata.project=alpha&status=succeeded`. Any other query
    parameter is 400 unknown_query_parameter."""
    where = job_filters(status, metadata_filter(request.query_params.multi_items()))
    rows, more = page(session, MergeJob, tenant, after=after, limit=limit, where=where)
    return JobsPublic(
        data=[JobSummary.of(j) for j in rows], has_more=more, next_cursor=rows[-1].id if more else None
    )


@router.get("/{job_id}", response_model=JobPublic, responses=responses(404))
def retrieve_merge(job_id: IdPath, tenant: TenantDep, session: SessionDep) -> JobPublic:
    """Status, stage, progress fraction, timestamps, and error code + message if it failed."""
    return JobPublic.of(jobs.get_job(session, tenant, job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=responses(404, 409))
def cancel_merge(job_id: IdPath, tenant: TenantDep, session: SessionDep) -> JobPublic:
    """Cancel: a queued job is cancelled at once; a running one stops at its next progress
    check (`cancel_requested` is true until then); a finished one is 409."""
    return JobPublic.of(jobs.cancel_job(session, tenant, job_id))
