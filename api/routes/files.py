"""/v1/files: upload (streamed), list, get, delete, download."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from api.deps import Cursor, IdPath, SessionDep, SettingsDep, StorageDep, TenantDep
from api.downloads import download
from api.errors import responses
from api.examples import FILE_MULTIPART, FILE_RAW
from api.schemas import FileDetail, FilePublic, FilesPublic
from api.uploads import Received, check_length, declared_length, receive
from core.errors import ServiceError
from core.file_checks import FileCheckError, format_for
from core.files import clean_filename, delete_file, finish_upload, get_file, storage_key
from core.models import FILE_PURPOSES, FileObject, new_id
from core.pagination import page
from core.quotas import check_storage_quota
from core.storage import BlobWriter
from core.tensor_stream import CheckedWriter, FiniteScanner

router = APIRouter(prefix="/v1/files", tags=["files"], responses=responses(401, 413, 422, 429))
BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
RANGED = {
    200: {"description": "The bytes.", "content": BINARY},
    206: {"description": "The requested range(s).", "content": {
        **BINARY, "multipart/byteranges": {"schema": {"type": "string", "format": "binary"}}}},
}  # fmt: skip

UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": list(FILE_PURPOSES)},
                    },
                },
                "examples": FILE_MULTIPART,
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}, "examples": FILE_RAW
            },
        },
    }
}


def _purpose(value: str | None) -> str:
    if value not in FILE_PURPOSES:
        raise ServiceError(
            "invalid_request", f"purpose must be one of {', '.join(FILE_PURPOSES)}; got {value!r}", 422
        )
    return value


@router.post(
    "", status_code=201, response_model=FileDetail, openapi_extra=UPLOAD_BODY, responses=responses(400)
)
async def upload_file(
    request: Request,
    tenant: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    purpose: Annotated[str | None, Query(description="Or a multipart 'purpose' field.")] = None,
    filename: Annotated[str | None, Query(description="Raw-body uploads: the file's name.")] = None,
) -> FileDetail:
    """Upload a file, streamed to storage with its sha256 and size computed on the way, then
    validated for its purpose (safetensors header parsed, archives listed, pickles refused).
    Send `multipart/form-data` (`file`, `purpose`) or the raw bytes with `?purpose=&filename=`."""
    if purpose is not None:
        _purpose(purpose)
    check_length(request, settings.max_upload_bytes)
    await run_in_threadpool(check_storage_quota, session, tenant, settings, declared_length(request) or 0)
    file_id = new_id("file")
    opened: dict[str, str] = {}

    def open_writer(name: str) -> BlobWriter:
        try:
            fmt = format_for(name, purpose)
        except FileCheckError as e:
            raise ServiceError(e.code, e.message, 400) from None
        opened.update(fmt=fmt, key=storage_key(tenant, file_id, fmt))
        writer = storage.writer(opened["key"], settings.max_upload_bytes)
        if fmt != "safetensors":
            return writer
        return CheckedWriter(writer, FiniteScanner(settings.max_safetensors_header_bytes))

    got: Received = await receive(
        request, open_writer, filename, settings.max_upload_bytes, settings.max_form_bytes
    )
    try:
        final_purpose = _purpose(purpose or got.fields.get("purpose"))
        format_for(got.filename, final_purpose)
    except FileCheckError as e:
        got.writer.abort()
        raise ServiceError(e.code, e.message, 400) from None
    except BaseException:
        got.writer.abort()
        raise
    size, sha = await run_in_threadpool(got.writer.commit)
    row = await run_in_threadpool(
        lambda: finish_upload(
            session,
            storage,
            settings,
            tenant_id=tenant,
            file_id=file_id,
            key=opened["key"],
            filename=clean_filename(got.filename),
            purpose=final_purpose,
            fmt=opened["fmt"],
            size=size,
            sha256=sha,
            scanned=True,
        )  # fmt: skip
    )
    return FileDetail.of(row)


@router.get("", response_model=FilesPublic, responses=responses(400))
def list_files(
    tenant: TenantDep,
    session: SessionDep,
    after: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    purpose: str | None = None,
) -> FilesPublic:
    """The caller's files, newest first; pass `next_cursor` as `after` for the next page."""
    where = (FileObject.purpose == _purpose(purpose),) if purpose else ()
    rows, more = page(session, FileObject, tenant, after=after, limit=limit, where=where)
    return FilesPublic(
        data=[FilePublic.of(f) for f in rows], has_more=more, next_cursor=rows[-1].id if more else None
    )


@router.get("/{file_id}", response_model=FileDetail, responses=responses(404))
def retrieve_file(file_id: IdPath, tenant: TenantDep, session: SessionDep) -> FileDetail:
    """A file's record, with its tensor table for safetensors files."""
    return FileDetail.of(get_file(session, tenant, file_id))


@router.delete("/{file_id}", status_code=204, responses=responses(404, 409))
def remove_file(file_id: IdPath, tenant: TenantDep, session: SessionDep, storage: StorageDep) -> Response:
    """Delete a file and its bytes; 409 file_in_use while an unfinished job uses it."""
    delete_file(session, storage, tenant, file_id)
    return Response(status_code=204)


@router.get(
    "/{file_id}/content", response_class=FileResponse, responses={**RANGED, **responses(404, 410, 416)}
)
def file_content(
    file_id: IdPath, request: Request, tenant: TenantDep, session: SessionDep, storage: StorageDep
) -> Response:
    """The file's bytes (HTTP Range supported)."""
    f = get_file(session, tenant, file_id)
    return download(request, storage, f.storage_key, f.filename, etag=f.sha256)
