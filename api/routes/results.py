"""/v1/merges/{id}/result, /masks and /report: what a finished job produced."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse
from sqlalchemy import select

from api.deps import SessionDep, StorageDep, TenantDep
from api.downloads import download
from api.schemas import ErrorResponse, EvaluationPublic, MaskPublic, MasksPublic, ReportPublic
from core import jobs
from core.errors import ServiceError
from core.models import Evaluation, Mask, MergeJob
from core.storage import Storage

router = APIRouter(prefix="/v1/merges", tags=["results"])
ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}}


def _require_finished(job: MergeJob, need_success: bool = True) -> None:
    if not job.finished:
        raise ServiceError(
            "job_not_finished", f"job {job.id} is {job.status}; wait until it has succeeded", 409
        )
    if need_success and job.status != "succeeded":
        raise ServiceError("job_not_succeeded", f"job {job.id} {job.status}: it has no result", 409)


@router.get("/{job_id}/result", response_class=FileResponse, responses=ERRORS)
def merged_checkpoint(
    job_id: str, request: Request, tenant: TenantDep, session: SessionDep, storage: StorageDep
) -> Response:
    """The merged checkpoint (safetensors). Supports HTTP Range (206 + Content-Range)."""
    job = jobs.get_job(session, tenant, job_id)
    _require_finished(job)
    if not job.result_key:
        raise ServiceError("result_missing", f"job {job_id} recorded no merged checkpoint", 410)
    return download(request, storage, job.result_key, f"{job.id}-merged.safetensors")


@router.get("/{job_id}/masks", response_model=MasksPublic, responses=ERRORS)
def masks(
    job_id: str,
    request: Request,
    tenant: TenantDep,
    session: SessionDep,
    storage: StorageDep,
    download_file: Annotated[bool, Query(alias="download")] = False,
) -> Any:
    """Per task: the binary mask's density per tensor and overall. `?download=1` returns
    masks.safetensors (keys '<task>::<param>', uint8), with HTTP Range."""
    job = jobs.get_job(session, tenant, job_id)
    _require_finished(job)
    if download_file:
        first = select(Mask.storage_key).where(Mask.job_id == job_id).limit(1)
        key = job.masks_key or session.scalar(first)
        if not key:
            raise ServiceError("result_missing", f"job {job_id} recorded no masks file", 410)
        return download(request, storage, key, f"{job.id}-masks.safetensors")
    rows = session.scalars(select(Mask).where(Mask.job_id == job_id).order_by(Mask.task)).all()
    data = [MaskPublic(task=m.task, overall_density=m.overall_density, density=m.density) for m in rows]
    link = f"/v1/merges/{job_id}/masks?download=1" if job.masks_key or rows else None
    return MasksPublic(job_id=job_id, data=data, download=link)


def _report_json(storage: Storage, key: str | None) -> dict[str, Any] | None:
    if not key or not storage.exists(key):
        return None
    try:
        with storage.open(key) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


@router.get("/{job_id}/report", response_model=ReportPublic, responses=ERRORS)
def report(job_id: str, tenant: TenantDep, session: SessionDep, storage: StorageDep) -> ReportPublic:
    """The evaluation table (accuracy per task and model kind: zero_shot, individual, merged,
    baselines) with per-kind averages, and the merge's report.json."""
    job = jobs.get_job(session, tenant, job_id)
    _require_finished(job, need_success=False)
    rows = session.scalars(
        select(Evaluation).where(Evaluation.job_id == job_id).order_by(Evaluation.model_kind, Evaluation.task)
    ).all()
    table: dict[str, dict[str, float]] = {}
    for e in rows:
        table.setdefault(e.model_kind, {})[e.task] = e.accuracy
    for accs in table.values():
        accs["average"] = sum(accs.values()) / len(accs)
    return ReportPublic(
        job_id=job_id,
        status=job.status,
        evaluations=[
            EvaluationPublic(
                task=e.task, model_kind=e.model_kind, accuracy=e.accuracy, samples=e.sample_count
            )
            for e in rows
        ],
        table=table,
        report=_report_json(storage, job.report_key),
    )
