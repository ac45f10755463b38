"""Upload clean-up on SQLite and PostgreSQL: expired uploads lose their parts, part files no row
names are deleted once older than the expiry (never a referenced or a young one), and
`calm-service purge-uploads` does both."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.orm import Session

from core.models import Upload, UploadPart, utcnow
from core.settings import Settings
from core.storage import LocalStorage
from core.uploads import create_upload, part_key, purge_expired, purge_orphan_parts, record_part
from service.cli import main as service_cli

DAY = 24 * 3600.0


def upload_with_part(session: Session, storage: LocalStorage, settings: Settings, tenant: str) -> Upload:
    upload = create_upload(session, settings, tenant, filename="big.safetensors", purpose="checkpoint",
                           size=100, sha256=None)  # fmt: skip
    key = part_key(upload, 1)
    size, sha = storage.write_stream(key, [b"p" * 40])
    record_part(session, storage, upload, 1, key, size, sha)
    return upload


def blob(storage: LocalStorage, key: str, age_s: float = 0.0) -> Path:
    """A file under storage whose last write was `age_s` ago."""
    storage.write_stream(key, [b"orphan"])
    path = storage.path(key)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def part_paths(session: Session, storage: LocalStorage, upload: Upload) -> list[Path]:
    keys = session.query(UploadPart.storage_key).filter(UploadPart.upload_id == upload.id)
    return [storage.path(k) for (k,) in keys]


def test_orphan_parts_go_only_when_old_and_unreferenced(session, storage, settings, tenant) -> None:
    upload = upload_with_part(session, storage, settings, tenant)
    [live] = part_paths(session, storage, upload)
    os.utime(live, (time.time() - 2 * DAY,) * 2)  # old, but its row names it
    old = blob(storage, f"uploads/{tenant}/upload-gone-00001-0123456789ab.part", 2 * DAY)
    tmp = blob(storage, f"uploads/{tenant}/.upload-gone-00002-ab.part.x1y2.part", 2 * DAY)
    young = blob(storage, f"uploads/{tenant}/upload-new-00001-0123456789ab.part", 60)
    outside = blob(storage, f"files/{tenant}/file-x.bin", 2 * DAY)  # not an upload part

    assert purge_orphan_parts(session, storage, DAY) == 2
    assert not old.exists() and not tmp.exists()
    assert live.exists() and young.exists() and outside.exists()
    assert purge_orphan_parts(session, storage, DAY) == 0


def test_purge_expired_drops_rows_and_blobs(session, storage, settings, tenant) -> None:
    upload = upload_with_part(session, storage, settings, tenant)
    [part] = part_paths(session, storage, upload)
    purge_expired(session, storage)  # not yet expired: untouched
    session.refresh(upload)
    assert upload.status == "pending" and part.exists()
    session.execute(update(Upload).where(Upload.id == upload.id).values(expires_at=utcnow()))
    session.commit()
    assert purge_expired(session, storage) >= 1
    session.refresh(upload)
    assert (upload.status, upload.error_code) == ("expired", "upload_expired")
    assert part_paths(session, storage, upload) == [] and not part.exists()


def test_purge_uploads_command(session, storage, settings, tenant, cli_env, capsys, tmp_path) -> None:
    expired = upload_with_part(session, storage, settings, tenant)
    [part] = part_paths(session, storage, expired)
    session.execute(update(Upload).where(Upload.id == expired.id).values(expires_at=utcnow()))
    session.commit()
    kept = upload_with_part(session, storage, settings, tenant)
    orphan = blob(storage, f"uploads/{tenant}/upload-gone-00001-0123456789ab.part", 2 * DAY)

    assert service_cli(["--data-dir", str(tmp_path / "var"), "purge-uploads"]) == 0
    out = capsys.readouterr().out
    assert "deleted 1 orphan part file(s)" in out and "expired 0 " not in out
    assert not part.exists() and not orphan.exists()
    session.refresh(expired)
    session.refresh(kept)
    assert (expired.status, kept.status) == ("expired", "pending")
    assert len(part_paths(session, storage, kept)) == 1
