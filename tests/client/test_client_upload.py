"""`calm-client upload` / `merge create` over real HTTP: files above --resumable-above go through
/v1/uploads in parts (state file, progress bar), smaller ones in one streamed POST /v1/files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select
from svc_api import Service
from svc_fixtures import TINY_CONFIG, checkpoint_tensors, dataset_bytes, safetensors_bytes

from client.cli import byte_count, main
from core.models import FileObject, Upload

CKPT = safetensors_bytes(checkpoint_tensors())  # ~7 KB: four parts of 2 KiB


def uploads_of(service: Service) -> list[Upload]:
    with service.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        stmt = select(Upload).where(Upload.tenant_id == service.tenants["a"])
        return list(session.scalars(stmt))


def stored(service: Service, file_id: str) -> bytes:
    with service.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        row = session.get(FileObject, file_id)
        assert row is not None and row.tenant_id == service.tenants["a"]
        return service.storage.path(row.storage_key).read_bytes()


def cli(service: Service, url: str, *args: str) -> int:
    return main(["--url", url, "--api-key", service.keys["a"], *args])


def test_forced_resumable_upload_has_the_files_sha256(
    service: Service, api_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "big.safetensors"
    path.write_bytes(CKPT)
    argv = ["upload", str(path), "--purpose", "checkpoint", "--resumable-above", "0", "--part-size", "2K"]
    assert cli(service, api_url, *argv) == 0
    out, err = capsys.readouterr()
    file = json.loads(out)
    assert file["sha256"] == hashlib.sha256(CKPT).hexdigest() and file["bytes"] == len(CKPT)
    assert file["status"] == "processed" and file["filename"] == "big.safetensors"
    assert stored(service, file["id"]) == CKPT
    [upload] = uploads_of(service)  # it went through /v1/uploads, not POST /v1/files
    assert (upload.status, upload.file_id, upload.bytes) == ("completed", file["id"], len(CKPT))
    assert not (tmp_path / "big.safetensors.upload.json").exists()  # state dropped once done
    assert "upload big.safetensors" in err and "100%" in err  # the progress bar


def test_small_files_keep_the_single_post(
    service: Service, api_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "small.safetensors"
    path.write_bytes(CKPT)
    assert cli(service, api_url, "-q", "upload", str(path), "--purpose", "checkpoint") == 0
    file = json.loads(capsys.readouterr().out)
    assert file["sha256"] == hashlib.sha256(CKPT).hexdigest()
    assert uploads_of(service) == []


def test_merge_create_uploads_the_specs_files_resumably(
    service: Service, api_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = {"base.safetensors": CKPT, "t0.safetensors": CKPT, "t1.safetensors": CKPT,
            "d0.safetensors": dataset_bytes(), "d1.safetensors": dataset_bytes()}  # fmt: skip
    for name, content in data.items():
        (tmp_path / name).write_bytes(content)
    spec = {
        "model": {"arch": "calm-svc-tiny", "custom_config": TINY_CONFIG, "checkpoint": "base.safetensors"},
        "tasks": [{"name": f"task{i}", "checkpoint": f"t{i}.safetensors", "unlabeled": f"d{i}.safetensors",
                   "classnames": ["cat", "dog"]} for i in range(2)],
        "method": "calm", "options": {"epochs": 2, "num_sequential": 1}, "seed": 7,
    }  # fmt: skip
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    state_dir = tmp_path / "state"
    argv = ["-q", "merge", "create", str(tmp_path / "spec.yaml"), "--no-watch",
            "--resumable-above", "0", "--part-size", "4096", "--state-dir", str(state_dir)]  # fmt: skip
    assert cli(service, api_url, *argv) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["status"] == "queued"
    uploads = uploads_of(service)
    assert len(uploads) == 5 and {u.status for u in uploads} == {"completed"}
    by_name = {u.filename: u.file_id for u in uploads}
    assert {name: stored(service, by_name[name]) for name in data} == data
    assert list(state_dir.iterdir()) == []


def test_byte_counts() -> None:
    assert [byte_count(t) for t in ("0", "1024", "2K", "256M", "256MiB", "4g")] == [
        0, 1024, 2048, 256 << 20, 256 << 20, 4 << 30]  # fmt: skip
    for bad in ("-1", "lots", "M"):
        with pytest.raises(Exception, match="byte count"):
            byte_count(bad)
