"""Completing a multi-part upload: parts -> one stored file -> the same checks as POST /v1/files.

1. Claim: `pending` -> `completing` (a conditional UPDATE), which freezes the parts.
2. Check the chosen parts exist and add up to the declared size (else 400, still `pending`).
3. Concatenate them into the file's final key with one atomic storage write (sha256 and size
   computed on the way); a declared sha256 must match (else 400 checksum_mismatch, the object
   deleted, still `pending`, so a bad part can be re-sent).
4. Validate and insert the File row with core.files.finish_upload; the upload becomes
   `completed` and its part rows go in that same commit, the part blobs after. A file that fails
   validation makes the upload `failed` (400 with the files endpoint's code, nothing kept).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from sqlalchemy.orm import Session

from core.errors import ServiceError
from core.files import finish_upload, storage_key
from core.models import FileObject, Upload, UploadPart, new_id, utcnow
from core.settings import Settings
from core.storage import Storage
from core.tensor_stream import FiniteScanner, NonFiniteError, scanned
from core.uploads import (
    claimable,
    conflict,
    delete_blobs,
    drop_parts,
    end,
    get_upload,
    list_parts,
    transition,
)

READ_BYTES = 1 << 20


def select_parts(parts: list[UploadPart], numbers: Sequence[int] | None) -> list[UploadPart]:
    """The parts to join, in order: `numbers` (strictly increasing), or all received."""
    if not parts:
        raise ServiceError("no_parts", "no parts have been received; PUT them before completing", 400)
    if numbers is None:
        return parts
    if not numbers or any(b <= a for a, b in zip(numbers, numbers[1:], strict=False)):
        raise ServiceError(
            "invalid_part_order", "part_numbers must be a non-empty, strictly increasing list", 400
        )
    have = {p.part_number: p for p in parts}
    missing = [n for n in numbers if n not in have]
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        raise ServiceError("part_missing", f"these parts have not been received: {shown}", 400)
    return [have[n] for n in numbers]


def _chunks(storage: Storage, parts: list[UploadPart]) -> Iterator[bytes]:
    for part in parts:
        with storage.open(part.storage_key) as f:
            while chunk := f.read(READ_BYTES):
                yield chunk


def _assemble(
    session: Session, storage: Storage, upload: Upload, numbers: Sequence[int] | None, key: str,
    scanner: FiniteScanner | None,
) -> tuple[int, str]:  # fmt: skip
    """Steps 2-3: writes the joined parts to `key` (through `scanner`: NaN/Inf raise
    NonFiniteError mid-write); returns (size, sha256)."""
    parts = select_parts(list_parts(session, upload.id), numbers)
    total = sum(p.bytes for p in parts)
    if total != upload.bytes:
        raise ServiceError(
            "size_mismatch",
            f"the parts hold {total} bytes but the upload was declared as {upload.bytes}; "
            "re-send the missing or wrong parts (GET the upload to see them), or cancel it",
            400,
        )
    chunks = _chunks(storage, parts)
    if scanner is not None:
        chunks = scanned(chunks, scanner)
    size, sha = storage.write_stream(key, chunks, max_bytes=upload.bytes)
    if upload.sha256 and sha != upload.sha256:
        storage.delete(key)
        raise ServiceError(
            "checksum_mismatch",
            f"the joined parts have sha256 {sha}, not the declared {upload.sha256}; compare each "
            "part's sha256 (GET the upload) with yours and re-send the ones that differ",
            400,
        )
    return size, sha


def _release(session: Session, upload: Upload) -> None:
    session.rollback()
    transition(session, upload, Upload.status == "completing", status="pending")
    session.commit()
    session.refresh(upload)


def complete_upload(
    session: Session, storage: Storage, settings: Settings, tenant_id: str, upload_id: str,
    part_numbers: Sequence[int] | None = None,
) -> tuple[Upload, FileObject]:  # fmt: skip
    """Joins the parts into a validated, `processed` File; see the module docstring."""
    upload = get_upload(session, storage, tenant_id, upload_id)
    if not transition(session, upload, claimable(), status="completing"):
        raise conflict(session, storage, upload)
    session.commit()
    file_id = new_id("file")
    key = storage_key(tenant_id, file_id, upload.format)
    scan = upload.format == "safetensors"
    scanner = FiniteScanner(settings.max_safetensors_header_bytes) if scan else None
    try:
        size, sha = _assemble(session, storage, upload, part_numbers, key, scanner)
    except NonFiniteError as e:  # the file is unusable: the upload is done with
        session.rollback()
        msg = f"{upload.filename}: {e}"
        end(session, storage, upload, "failed", Upload.status == "completing", "non_finite_values", msg)
        raise ServiceError("non_finite_values", msg, 400) from None
    except BaseException:
        _release(session, upload)
        raise
    return upload, _finish(session, storage, settings, upload, file_id, key, size, sha, scan)


def _finish(
    session: Session, storage: Storage, settings: Settings, upload: Upload, file_id: str, key: str,
    size: int, sha: str, scanned: bool,
) -> FileObject:  # fmt: skip
    """Step 4."""
    keys: list[str] = []

    def completed(_: FileObject) -> None:
        values = {"status": "completed", "file_id": file_id, "completed_at": utcnow()}
        if not transition(session, upload, Upload.status == "completing", **values):
            raise ServiceError("upload_not_pending", f"upload {upload.id} changed while completing", 409)
        keys.extend(drop_parts(session, upload))

    try:
        row = finish_upload(
            session, storage, settings, tenant_id=upload.tenant_id, file_id=file_id, key=key,
            filename=upload.filename, purpose=upload.purpose, fmt=upload.format, size=size,
            sha256=sha, on_insert=completed, scanned=scanned,
        )  # fmt: skip
    except ServiceError as e:
        session.rollback()
        storage.delete(key)
        if e.status == 400:  # the file failed validation: the upload is done with
            end(session, storage, upload, "failed", Upload.status == "completing", e.code, e.message)
        else:
            _release(session, upload)
        raise
    except BaseException:
        _release(session, upload)
        raise
    session.refresh(upload)
    delete_blobs(storage, keys)
    return row
