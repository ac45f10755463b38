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
    # not a terminal: timestamped progress lines, no `\r` frames
    assert "upload  upload big.safetensors" in err and "100.0%" in err and "\r" not in err


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


def test_watch_prints_lines_when_not_on_a_terminal(service: Service, api_url: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A followed job's events as timestamped plain lines or JSON lines (each with its own
    time), no `\\r`; fractions never go back."""
    import re
    from datetime import datetime

    from core import jobs

    job_id = service.create(service.body(service.merge_inputs())).json()["id"]
    with service.client.app.state.sessionmaker() as s:  # type: ignore[attr-defined]
        attempt = jobs.claim_attempt(s, job_id, "worker-1")
        for stage, fraction in (("load", 0.0), ("pseudo_labels", 0.2), ("mask:task0", 0.6),
                                ("merged", 0.98), ("save", 0.98)):
            jobs.update_progress(s, job_id, stage, fraction, f"at {stage}", {"loss": 0.25},
                                 min_interval_s=0.0, attempt=attempt)
        jobs.finish_job(s, job_id, "failed", "internal_error", "boom", attempt=attempt)
    assert cli(service, api_url, "--progress", "plain", "watch", job_id) == 1
    err = capsys.readouterr().err
    line = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d  ")
    lines = err.splitlines()
    assert "\r" not in err and all(line.match(x) for x in lines[:-1]) and "boom" in lines[-1], err
    assert any(" 60.0%  mask:task0  at mask:task0  loss=0.25" in x for x in lines)
    assert any("error: failed: boom" in x for x in lines)
    assert cli(service, api_url, "--progress", "json", "watch", job_id) == 1
    events = [json.loads(x) for x in capsys.readouterr().err.splitlines()[:-1]]
    stages = [e["stage"] for e in events]
    assert stages[:4] == ["validating", "queued", "starting", "load"] and "save" in stages
    fractions = [e["fraction"] for e in events if e["fraction"] is not None]
    assert fractions == sorted(fractions) and all(datetime.fromisoformat(e["time"]) for e in events)
