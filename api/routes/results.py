"""/v1/merges/{id}/result, /masks, /report, /report.html and /archive: what a finished job
produced (the folder's files are listed in calm.result_files; docs/results.md)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from sqlalchemy import select

from api.archive import zip_stream
from api.deps import IdPath, SessionDep, StorageDep, TenantDep
from api.downloads import download
from api.errors import responses
from api.schemas import EvaluationPublic, MaskPublic, MasksPublic, ReportPublic
from calm.result_files import MASKS_FILE, MERGED_FILE, REPORT_HTML_FILE, RESULT_FILES, media_type
from core import jobs
from core.errors import ServiceError
from core.job_results import result_folder
from core.models import Evaluation, Mask, MergeJob
from core.storage import Storage

router = APIRouter(prefix="/v1/merges", tags=["results"], responses=responses(401, 404, 409, 413, 422, 429))
BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
PARTIAL = {206: {"description": "The requested range(s).", "content": {
    **BINARY, "multipart/byteranges": {"schema": {"type": "string", "format": "binary"}}}}}  # fmt: skip
# report.html is self-contained: it may load nothing, run nothing, submit nothing.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'"


def _require_finished(job: MergeJob, need_success: bool = True) -> None:
    if not job.finished:
        raise ServiceError(
            "job_not_finished", f"job {job.id} is {job.status}; wait until it has succeeded", 409
        )
    if need_success and job.status != "succeeded":
        raise ServiceError("job_not_succeeded", f"job {job.id} {job.status}: it has no result", 409)


@router.get(
    "/{job_id}/result",
    response_class=FileResponse,
    responses={
        200: {"description": "merged.safetensors", "content": BINARY}, **PARTIAL, **responses(410, 416)
    },
)
def merged_checkpoint(
    job_id: IdPath, request: Request, tenant: TenantDep, session: SessionDep, storage: StorageDep
) -> Response:
    """The merged checkpoint (safetensors). Supports HTTP Range (206 + Content-Range)."""
    job = jobs.get_job(session, tenant, job_id)
    _require_finished(job)
    if not job.result_key:
        raise ServiceError("result_missing", f"job {job_id} recorded no merged checkpoint", 410)
    return download(request, storage, job.result_key, f"{job.id}-{MERGED_FILE}")


@router.get(
    "/{job_id}/masks",
    response_model=MasksPublic,
    responses={200: {"description": "Densities (JSON), or masks.safetensors with ?download=1",
                     "content": BINARY}, **PARTIAL, **responses(410, 416)},
)  # fmt: skip
def masks(
    job_id: IdPath,
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
        return download(request, storage, key, f"{job.id}-{MASKS_FILE}")
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


@router.get("/{job_id}/report", response_model=ReportPublic)
def report(job_id: IdPath, tenant: TenantDep, session: SessionDep, storage: StorageDep) -> ReportPublic:
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


def _result_files(job: MergeJob, storage: Storage) -> dict[str, str]:
    """File name -> storage key of the job's result files that exist, in RESULT_FILES order."""
    folder = result_folder(job)
    if folder is None:
        return {}
    keys = {f: f"{folder}/{f}" for f in RESULT_FILES.values()}
    return {f: k for f, k in keys.items() if storage.exists(k)}


@router.get("/{job_id}/report.html", response_class=FileResponse,
            responses={200: {"description": "report.html", "content": {"text/html": {}}},
                       **responses(410)})
def report_html(job_id: IdPath, tenant: TenantDep, session: SessionDep, storage: StorageDep) -> Response:
    """The self-contained report page (accuracy per task, mask density per layer, the plan and
    the chosen settings): inline CSS and SVG, nothing fetched, no scripts."""
    job = jobs.get_job(session, tenant, job_id)
    _require_finished(job)
    key = _result_files(job, storage).get(REPORT_HTML_FILE)
    if key is None:
        raise ServiceError("result_missing", f"job {job_id} has no {REPORT_HTML_FILE} (it finished "
                           "before reports were written); its data is at /report", 410)
    with storage.open(key) as f:
        page = f.read()
    headers = {"Content-Security-Policy": REPORT_CSP, "X-Content-Type-Options": "nosniff"}
    return Response(page, media_type=media_type(REPORT_HTML_FILE), headers=headers)


@router.get(
    "/{job_id}/archive",
    response_class=StreamingResponse,
    responses={**responses(410), 200: {"content": {"application/zip": {"schema": {
        "type": "string", "format": "binary"}}}, "description": "A zip archive."}},
)
def archive(job_id: IdPath, tenant: TenantDep, session: SessionDep, storage: StorageDep) -> StreamingResponse:
    """Every result file of the job in one zip, streamed: merged.safetensors, masks.safetensors,
    report.json, spec.json, open_clip_config.json, README.md (model card) and report.html."""
    job = jobs.get_job(session, tenant, job_id)
    _require_finished(job)
    files = _result_files(job, storage)
    if not files:
        raise ServiceError("result_missing", f"job {job_id} recorded no result files", 410)
    return StreamingResponse(
        zip_stream((f"{job.id}/{name}", storage.size(key), lambda k=key: storage.open(k))
                   for name, key in files.items()),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{job.id}-results.zip"'},
    )
