"""File records: finish an upload (validate, then insert), look up and delete, per tenant."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.errors import ServiceError, not_found
from core.file_checks import FileCheckError, Limits, check_file
from core.models import FINISHED_STATUSES, FileObject, JobFile, MergeJob, utcnow
from core.quotas import check_storage_quota
from core.settings import Settings
from core.storage import Storage


def storage_key(tenant_id: str, file_id: str, fmt: str) -> str:
    """files/<tenant>/<file id>.<format>: the suffix tells the library how to read it."""
    return f"files/{tenant_id}/{file_id}.{fmt}"


def clean_filename(name: str) -> str:
    base = PurePosixPath(name.replace("\\", "/")).name.strip()
    return "".join(c for c in base if c.isprintable())[:255] or "upload"


def limits(settings: Settings) -> Limits:
    s = settings
    return Limits(
        max_header_bytes=s.max_safetensors_header_bytes, max_members=s.max_archive_members,
        max_archive_bytes=s.max_archive_bytes, max_compression_ratio=s.max_compression_ratio,
        max_images=s.max_images, max_image_bytes=s.max_image_bytes,
        max_image_pixels=s.max_image_pixels, max_tensors=s.max_tensors,
    )  # fmt: skip


def finish_upload(
    session: Session,
    storage: Storage,
    settings: Settings,
    *,
    tenant_id: str,
    file_id: str,
    key: str,
    filename: str,
    purpose: str,
    fmt: str,
    size: int,
    sha256: str,
    on_insert: Callable[[FileObject], None] | None = None,
    scanned: bool = False,
) -> FileObject:
    """Validates the stored blob for `purpose` and inserts the `processed` row. On any failure
    the blob is deleted and nothing is inserted (400 with the check's code; 429 over the
    tenant's storage quota). `on_insert` runs after the row is flushed, in the same transaction
    (a multi-part upload completes with it). `scanned`: the bytes were checked for NaN/Inf
    while they streamed in (core.tensor_stream)."""
    try:
        check_storage_quota(session, tenant_id, settings, size)
        meta = check_file(storage.path(key), fmt, purpose, limits(settings), scanned=scanned)
        row = FileObject(
            id=file_id, tenant_id=tenant_id, purpose=purpose, filename=filename, bytes=size,
            sha256=sha256, status="processed", format=fmt, meta=meta, storage_key=key,
            created_at=utcnow(),
        )  # fmt: skip
        session.add(row)
        if on_insert is not None:
            session.flush()
            on_insert(row)
        session.commit()
        return row
    except FileCheckError as e:
        storage.delete(key)
        raise ServiceError(e.code, f"{filename}: {e.message}", status=400) from None
    except BaseException:
        session.rollback()
        storage.delete(key)
        raise


def get_file(session: Session, tenant_id: str, file_id: str) -> FileObject:
    row = session.get(FileObject, file_id)
    if row is None or row.tenant_id != tenant_id:
        raise not_found("file", file_id)
    return row


def _in_use(session: Session, file_id: str) -> ServiceError:
    job = session.scalar(
        select(MergeJob.id)
        .join(JobFile, JobFile.job_id == MergeJob.id)
        .where(JobFile.file_id == file_id, MergeJob.status.not_in(FINISHED_STATUSES))
        .limit(1)
    )
    return ServiceError(
        "file_in_use",
        f"file {file_id} is used by job {job or '(being created)'}, which has not finished; "
        "cancel the job or wait for it to finish",
        status=409,
    )


def delete_file(session: Session, storage: Storage, tenant_id: str, file_id: str) -> None:
    """Deletes the row, then the blob. 409 file_in_use while an unfinished job references it
    (enforced by the foreign key too, so a job created concurrently cannot lose its file)."""
    row = get_file(session, tenant_id, file_id)
    finished_jobs = select(MergeJob.id).where(MergeJob.status.in_(FINISHED_STATUSES))
    session.execute(delete(JobFile).where(JobFile.file_id == file_id, JobFile.job_id.in_(finished_jobs)))
    session.delete(row)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise _in_use(session, file_id) from None
    storage.delete(row.storage_key)
