"""/v1/uploads: resumable multi-part uploads of large files.

Create the upload (name, purpose, total size, optional sha256), PUT its parts in any order
(re-sending a part replaces it), GET it to see which parts arrived (resume after a crash), then
complete it: the parts are joined and validated exactly like POST /v1/files, giving a File.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.deps import IdPath, SessionDep, SettingsDep, StorageDep, TenantDep
from api.errors import responses
from api.examples import PART_RAW, UPLOAD_COMPLETE, UPLOAD_CREATE
from api.schemas import FileDetail
from api.upload_schemas import (
    UploadComplete,
    UploadCompleted,
    UploadCreate,
    UploadPartPublic,
    UploadPublic,
)
from api.uploads import check_length, receive_raw
from core.errors import ServiceError
from core.models import Upload
from core.storage import Storage
from core.upload_complete import complete_upload
from core.uploads import (
    MAX_PARTS,
    cancel_upload,
    conflict,
    create_upload,
    get_upload,
    list_parts,
    part_budget,
    part_key,
    part_too_large,
    record_part,
)

router = APIRouter(prefix="/v1/uploads", tags=["uploads"], responses=responses(401, 413, 422, 429))
PART_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"}, "examples": PART_RAW}},
    }
}


def _public(session: Session, upload: Upload) -> UploadPublic:
    return UploadPublic.of(upload, list_parts(session, upload.id))


@router.post("", status_code=201, response_model=UploadPublic, responses=responses(400))
def create(
    body: Annotated[UploadCreate, Body(openapi_examples=UPLOAD_CREATE)],
    tenant: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
) -> UploadPublic:
    """Start an upload. Refused at once if `bytes` is over the service's limit (413) or the file
    name is not a format the purpose accepts (pickles included, 400). Then PUT the parts, of
    about `part_size` bytes each, numbered from 1, before `expires_at`."""
    upload = create_upload(
        session, settings, tenant, filename=body.filename, purpose=body.purpose, size=body.bytes,
        sha256=body.sha256,
    )  # fmt: skip
    return UploadPublic.of(upload, [])


@router.get("/{upload_id}", response_model=UploadPublic, responses=responses(404))
def retrieve(upload_id: IdPath, tenant: TenantDep, session: SessionDep, storage: StorageDep) -> UploadPublic:
    """Status and the parts received so far (number, size, sha256), to resume an upload."""
    return _public(session, get_upload(session, storage, tenant, upload_id))


def _prepare(session: Session, storage: Storage, tenant: str, upload_id: str, n: int) -> tuple[Upload, int]:
    upload = get_upload(session, storage, tenant, upload_id)
    if upload.status != "pending":
        raise conflict(session, storage, upload)
    budget = part_budget(session, upload, n)
    if budget <= 0:
        raise part_too_large(upload, budget)
    return upload, budget


@router.put(
    "/{upload_id}/parts/{part_number}",
    response_model=UploadPartPublic,
    responses=responses(400, 404, 409),
    openapi_extra=PART_BODY,
)
async def put_part(
    upload_id: IdPath,
    part_number: Annotated[int, Path(ge=1, le=MAX_PARTS)],
    request: Request,
    tenant: TenantDep,
    session: SessionDep,
    storage: StorageDep,
) -> UploadPartPublic:
    """Upload part `part_number` (1..10000) as the raw request body, streamed to storage with
    its sha256 computed on the way. Sending a part again replaces it atomically."""
    upload, budget = await run_in_threadpool(_prepare, session, storage, tenant, upload_id, part_number)
    key = part_key(upload, part_number)
    try:
        check_length(request, budget)
        writer = storage.writer(key, budget)
        await receive_raw(request, writer, budget)
    except ServiceError as e:
        if e.status == 413:
            raise part_too_large(upload, budget) from None
        raise
    size, sha = await run_in_threadpool(writer.commit)
    part = await run_in_threadpool(record_part, session, storage, upload, part_number, key, size, sha)
    return UploadPartPublic.of(part)


@router.post("/{upload_id}/complete", response_model=UploadCompleted, responses=responses(400, 404, 409))
def complete(
    upload_id: IdPath,
    tenant: TenantDep,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    body: Annotated[UploadComplete | None, Body(openapi_examples=UPLOAD_COMPLETE)] = None,
) -> UploadCompleted:
    """Join the parts (`part_numbers`, or all received, in order) into a file, check its size
    and declared sha256 (400 size_mismatch / checksum_mismatch: the upload stays pending), then
    validate it like POST /v1/files (400 with the same codes: the upload becomes failed)."""
    numbers = body.part_numbers if body else None
    upload, file = complete_upload(session, storage, settings, tenant, upload_id, numbers)
    return UploadCompleted(upload=_public(session, upload), file=FileDetail.of(file))


@router.post("/{upload_id}/cancel", response_model=UploadPublic, responses=responses(404, 409))
def cancel(upload_id: IdPath, tenant: TenantDep, session: SessionDep, storage: StorageDep) -> UploadPublic:
    """Cancel a pending upload and delete its parts (409 once completed, failed or expired)."""
    return _public(session, cancel_upload(session, storage, tenant, upload_id))
