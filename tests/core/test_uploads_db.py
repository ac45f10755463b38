"""core.uploads under concurrency, on SQLite and PostgreSQL: parts racing each other and a
completion never leave a row without its blob, a blob without its row, or more bytes than
declared."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker
from svc_fixtures import checkpoint_tensors, safetensors_bytes

from core.errors import ServiceError
from core.models import FileObject, Upload
from core.settings import Settings
from core.storage import LocalStorage
from core.upload_complete import complete_upload
from core.uploads import create_upload, list_parts, part_key, record_part

CKPT = safetensors_bytes(checkpoint_tensors())


def _put(factory: sessionmaker[Session], storage: LocalStorage, upload_id: str, n: int, data: bytes) -> str:
    """What PUT /parts/{n} does after streaming: store the blob, then record it."""
    with factory() as session:
        upload = session.get(Upload, upload_id)
        assert upload is not None
        key = part_key(upload, n)
        size, sha = storage.write_stream(key, [data])
        try:
            record_part(session, storage, upload, n, key, size, sha)
        except ServiceError as e:
            return e.code
        return "ok"


def _blobs(storage: LocalStorage, upload: Upload) -> list[Path]:
    """The upload's part blobs, and any temporary file a writer left behind."""
    return sorted(p for p in storage.root.rglob(f"*{upload.id}*") if p.is_file())


def test_racing_parts_keep_rows_blobs_and_budget_consistent(
    factory: sessionmaker[Session], session: Session, storage: LocalStorage, settings: Settings, tenant: str
) -> None:
    half = len(CKPT) // 2
    upload = create_upload(
        session, settings, tenant, filename="c.safetensors", purpose="checkpoint", size=len(CKPT), sha256=None
    )
    jobs = [(1, CKPT[:half])] * 6 + [(2, CKPT[half:])] * 6 + [(3, CKPT[:half])] * 4  # 3 parts: too many
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda j: _put(factory, storage, upload.id, *j), jobs))
    assert set(codes) <= {"ok", "part_too_large"} and "part_too_large" in codes  # whichever came last
    session.expire_all()
    parts = list_parts(session, upload.id)
    assert sum(p.bytes for p in parts) <= len(CKPT)  # never more than declared
    assert sorted(storage.path(p.storage_key) for p in parts) == _blobs(storage, upload)  # 1 blob a row
    for p in parts:
        assert hashlib.sha256(storage.path(p.storage_key).read_bytes()).hexdigest() == p.sha256


def test_parts_racing_a_completion_are_refused_or_included(
    factory: sessionmaker[Session], session: Session, storage: LocalStorage, settings: Settings, tenant: str
) -> None:
    half = len(CKPT) // 2
    upload = create_upload(
        session, settings, tenant, filename="c.safetensors", purpose="checkpoint", size=len(CKPT), sha256=None
    )
    assert _put(factory, storage, upload.id, 1, CKPT[:half]) == "ok"
    assert _put(factory, storage, upload.id, 2, CKPT[half:]) == "ok"

    def finish() -> str:
        with factory() as s:
            try:
                return complete_upload(s, storage, settings, tenant, upload.id)[1].sha256
            except ServiceError as e:
                return e.code

    with ThreadPoolExecutor(4) as pool:
        done = pool.submit(finish)
        resends = [pool.submit(_put, factory, storage, upload.id, 2, CKPT[half:]) for _ in range(6)]
        codes = {f.result() for f in resends}
    assert done.result() == hashlib.sha256(CKPT).hexdigest()
    assert codes <= {"ok", "upload_not_pending"}
    session.expire_all()
    assert session.get(Upload, upload.id).status == "completed"  # type: ignore[union-attr]
    assert session.query(FileObject).filter(FileObject.tenant_id == tenant).count() == 1
    assert list_parts(session, upload.id) == [] and _blobs(storage, upload) == []
