"""Resumable multi-part uploads: create, look up, receive parts, cancel, expire (per tenant).

Parts are blobs `uploads/<tenant>/<upload>-<part>-<random>.part`, a new key per attempt, so
re-sending a part switches the part row to the new blob in one commit and only then deletes the
old blob. Blobs are only ever deleted by the keys their rows name (no directory is removed
under a part still being streamed; a part arriving too late is refused and its blob deleted).
Status changes are conditional UPDATEs on the upload row (which also lock it on PostgreSQL, and
take SQLite's write lock), so a part, a cancel and a complete racing each other serialise:
parts are only recorded while `pending`, and `completing` freezes them. Completion itself is in
core.upload_complete.
"""

from __future__ import annotations

import secrets
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from core.errors import ServiceError, not_found
from core.file_checks import FileCheckError, format_for
from core.files import clean_filename
from core.models import Upload, UploadPart, new_id, utcnow
from core.quotas import check_storage_quota
from core.settings import Settings
from core.storage import Storage

MAX_PARTS = 10_000
STALE_COMPLETING = timedelta(minutes=15)  # a crashed `complete` may be retried after this


def part_key(upload: Upload, part_number: int) -> str:
    """A fresh key per attempt: a re-sent part never overwrites the blob its row points to."""
    return f"uploads/{upload.tenant_id}/{upload.id}-{part_number:05d}-{secrets.token_hex(6)}.part"


def drop_parts(session: Session, upload: Upload) -> list[str]:
    """Deletes the part rows (not committed; call with the upload row locked by a transition);
    returns their blobs' keys, to delete once that commits."""
    keys = list(session.scalars(select(UploadPart.storage_key).where(UploadPart.upload_id == upload.id)))
    session.execute(delete(UploadPart).where(UploadPart.upload_id == upload.id))
    return keys


def delete_blobs(storage: Storage, keys: list[str]) -> None:
    for key in keys:
        storage.delete(key)


def suggested_part_size(settings: Settings, total: int) -> int:
    """settings.upload_part_bytes, raised so that MAX_PARTS parts can hold `total`."""
    return min(total, max(settings.upload_part_bytes, -(-total // MAX_PARTS)))


def create_upload(
    session: Session, settings: Settings, tenant_id: str, *, filename: str, purpose: str,
    size: int, sha256: str | None,
) -> Upload:  # fmt: skip
    """A `pending` upload. The declared size and the file name's format are checked now, so a
    too-large or pickled file is refused before any byte is sent."""
    if size > settings.max_upload_bytes:
        raise ServiceError(
            "file_too_large", f"uploads are limited to {settings.max_upload_bytes} bytes; got {size}", 413
        )
    name = clean_filename(filename)
    try:
        fmt = format_for(name, purpose)
    except FileCheckError as e:
        raise ServiceError(e.code, e.message, 400) from None
    check_storage_quota(session, tenant_id, settings, size)
    now = utcnow()
    row = Upload(
        id=new_id("upload"), tenant_id=tenant_id, purpose=purpose, filename=name, format=fmt,
        bytes=size, sha256=sha256.lower() if sha256 else None,
        part_size=suggested_part_size(settings, size), status="pending", created_at=now,
        updated_at=now, expires_at=now + timedelta(seconds=settings.upload_expiry_s),
    )  # fmt: skip
    session.add(row)
    session.commit()
    return row


def get_upload(session: Session, storage: Storage, tenant_id: str, upload_id: str) -> Upload:
    """The tenant's upload (404 otherwise); a pending one past `expires_at` becomes `expired`."""
    row = session.get(Upload, upload_id, populate_existing=True)
    if row is None or row.tenant_id != tenant_id:
        raise not_found("upload", upload_id)
    if row.status == "pending" and row.expires_at <= utcnow():
        expire(session, storage, row)
    return row


def list_parts(session: Session, upload_id: str) -> list[UploadPart]:
    stmt = select(UploadPart).where(UploadPart.upload_id == upload_id).order_by(UploadPart.part_number)
    return list(session.scalars(stmt))


def live() -> Any:
    """The condition under which parts may be added: pending and not expired."""
    return and_(Upload.status == "pending", Upload.expires_at > utcnow())


def claimable() -> Any:
    """`complete` may start: live, or a `completing` left behind by a crash long ago."""
    stale = and_(Upload.status == "completing", Upload.updated_at < utcnow() - STALE_COMPLETING)
    return or_(live(), stale)


def transition(session: Session, upload: Upload, where: Any, **values: Any) -> bool:
    """UPDATE the upload WHERE `where` (not committed); True when it matched."""
    stmt = update(Upload).where(Upload.id == upload.id, where).values(updated_at=utcnow(), **values)
    result: Any = session.execute(stmt.execution_options(synchronize_session=False))
    return result.rowcount == 1


def conflict(session: Session, storage: Storage, upload: Upload) -> ServiceError:
    """Why an upload cannot take this action now (409), from its current state."""
    session.rollback()
    session.refresh(upload)
    if upload.status == "pending" and upload.expires_at <= utcnow():
        expire(session, storage, upload)
    if upload.status == "expired":
        return ServiceError(
            "upload_expired", f"upload {upload.id} expired at {upload.expires_at.isoformat()}; "
            "create a new upload", 409,
        )  # fmt: skip
    hint = {"completing": "it is being completed; GET it to see the outcome"}.get(
        upload.status, "create a new upload"
    )
    return ServiceError("upload_not_pending", f"upload {upload.id} is {upload.status}; {hint}", 409)


def end(
    session: Session, storage: Storage, upload: Upload, status: str, where: Any,
    code: str | None = None, message: str | None = None,
) -> bool:  # fmt: skip
    """Moves the upload to a final `status` and drops its parts (rows in the same commit, then
    the blobs). False, with nothing changed, when `where` does not hold."""
    ok = transition(session, upload, where, status=status, error_code=code, error_message=message)
    keys = drop_parts(session, upload) if ok else []
    session.commit()
    session.refresh(upload)
    delete_blobs(storage, keys)
    return ok


def expire(session: Session, storage: Storage, upload: Upload) -> None:
    msg = "the upload was not completed before it expired"
    end(session, storage, upload, "expired", Upload.status == "pending", "upload_expired", msg)


def cancel_upload(session: Session, storage: Storage, tenant_id: str, upload_id: str) -> Upload:
    """Cancels a pending upload and deletes its parts; repeating it is harmless; 409 otherwise."""
    upload = get_upload(session, storage, tenant_id, upload_id)
    if upload.status == "cancelled":
        return upload
    if not end(session, storage, upload, "cancelled", Upload.status == "pending"):
        raise conflict(session, storage, upload)
    return upload


def part_budget(session: Session, upload: Upload, part_number: int) -> int:
    """Bytes part `part_number` may hold: the declared total less the other parts."""
    others = select(func.coalesce(func.sum(UploadPart.bytes), 0)).where(
        UploadPart.upload_id == upload.id, UploadPart.part_number != part_number
    )
    return upload.bytes - int(session.scalar(others) or 0)


def part_too_large(upload: Upload, budget: int) -> ServiceError:
    return ServiceError(
        "part_too_large",
        f"the parts of upload {upload.id} may total {upload.bytes} bytes (as declared at creation); "
        f"this part may hold at most {max(budget, 0)}",
        413,
    )


def record_part(
    session: Session, storage: Storage, upload: Upload, part_number: int, key: str, size: int, sha256: str
) -> UploadPart:
    """Makes the stored blob `key` part `part_number`, replacing an earlier one in one commit
    (its blob deleted after). On any refusal the new blob is deleted: 409 unless the upload is
    pending, 413 part_too_large past the declared total, 400 empty_part."""
    old_key = None
    try:
        if size == 0:
            raise ServiceError("empty_part", "a part must hold at least one byte", 400)
        if not transition(session, upload, live()):  # locks the upload row until commit
            raise conflict(session, storage, upload)
        if size > (budget := part_budget(session, upload, part_number)):
            raise part_too_large(upload, budget)
        part = session.get(UploadPart, (upload.id, part_number), populate_existing=True)
        if part is None:
            part = UploadPart(upload_id=upload.id, part_number=part_number)
            session.add(part)
        else:
            old_key = part.storage_key
        part.bytes, part.sha256, part.storage_key, part.created_at = size, sha256, key, utcnow()
        session.commit()
    except BaseException:
        session.rollback()
        storage.delete(key)
        raise
    if old_key is not None:
        storage.delete(old_key)
    return part


def purge_expired(session: Session, storage: Storage, limit: int = 500) -> int:
    """Expires pending uploads past `expires_at` (and deletes their parts); for a periodic sweep."""
    stmt = select(Upload).where(Upload.status == "pending", Upload.expires_at <= utcnow()).limit(limit)
    rows = list(session.scalars(stmt))
    for row in rows:
        expire(session, storage, row)
    return len(rows)


def purge_orphan_parts(session: Session, storage: Storage, older_than_s: float) -> int:
    """Deletes blobs under `uploads/` that no part row names and that have not been written
    for `older_than_s` (the upload expiry): blobs of a crash between storing a part and
    recording it, and temporary files of interrupted writes. A part being streamed or just
    stored is young, so it is never touched. Returns how many blobs it deleted."""
    cutoff = time.time() - older_than_s
    keys = [b.key for b in storage.list("uploads") if b.modified < cutoff]
    named: set[str] = set()
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        named.update(session.scalars(select(UploadPart.storage_key).where(UploadPart.storage_key.in_(chunk))))
    session.rollback()
    orphans = [key for key in keys if key not in named]
    delete_blobs(storage, orphans)
    return len(orphans)
