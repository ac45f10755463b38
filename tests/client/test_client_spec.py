"""The client's torch-free parts: spec file -> job body (validated first, each local file
uploaded once, folders zipped, files the service has reused, nothing stripped) and the report
table."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from calm.spec_errors import SpecError
from client.display import report_table
from client.local_files import zip_folder
from client.spec import job_body, load_spec


def _files(tmp_path: Path) -> None:
    for name in ("base.safetensors", "a.safetensors", "b.safetensors", "data.zip", "eval.npz"):
        (tmp_path / name).write_bytes(name.encode())


def test_job_body_uploads_each_local_file_once_and_keeps_every_field(tmp_path: Path) -> None:
    _files(tmp_path)
    (tmp_path / "arch.json").write_text(json.dumps({"embed_dim": 8}))
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(
        "model: {arch: my-clip, custom_config: arch.json, checkpoint: base.safetensors}\n"
        "run: {device: cuda}\n"
        "metadata: {team: vision}\n"
        "tasks:\n"
        "  - {name: parity (inverted), checkpoint: a.safetensors, unlabeled: data.zip, classnames: [x, y],"
        " eval: eval.npz, head: null}\n"
        "  - {name: b, checkpoint: b.safetensors, unlabeled: data.zip, classnames: [x, y],"
        " eval: file-already-uploaded}\n"
        "options: {epochs: 5}\n"
    )
    calls: list[tuple[str, str]] = []

    def upload(path: Path, purpose: str) -> str:
        calls.append((path.name, purpose))
        return f"file-{len(calls)}"

    body = job_body(load_spec(spec_path), upload, spec_path.parent)
    assert calls == [("base.safetensors", "checkpoint"), ("a.safetensors", "checkpoint"),
                     ("data.zip", "dataset"), ("eval.npz", "eval"), ("b.safetensors", "checkpoint")]
    assert body["model"] == {"arch": "my-clip", "custom_config": {"embed_dim": 8}, "checkpoint": "file-1"}
    assert body["tasks"][0] == {"name": "parity (inverted)", "checkpoint": "file-2", "unlabeled": "file-3",
                                "classnames": ["x", "y"], "eval": "file-4", "head": None}
    assert body["tasks"][1]["unlabeled"] == "file-3"  # the same file, uploaded once
    assert body["tasks"][1]["eval"] == "file-already-uploaded"
    assert body["run"] == {"device": "cuda"} and body["metadata"] == {"team": "vision"}
    assert body["options"] == {"epochs": 5}


def test_spec_and_file_problems_come_before_any_upload(tmp_path: Path) -> None:
    _files(tmp_path)
    spec = {"model": {"arch": "x", "checkpoint": "nope.safetensors"},
            "tasks": [{"name": n, "checkpoint": "a.safetensors", "unlabeled": "data.zip",
                       "classnames": ["x", "y"]} for n in ("a", "b")]}

    def upload(path: Path, purpose: str) -> str:
        raise AssertionError("nothing may be uploaded")

    with pytest.raises(SpecError, match="model.checkpoint: .*nope.safetensors: no such file"):
        job_body(spec, upload, tmp_path)
    with pytest.raises(SpecError, match="options.epoch: unknown option for method 'calm'; did you mean"):
        job_body({**spec, "options": {"epoch": 3}}, upload, tmp_path)
    (tmp_path / "ckpt").mkdir()
    spec["model"]["checkpoint"] = "ckpt"
    with pytest.raises(SpecError, match="ckpt is a folder; a checkpoint must be a file"):
        job_body(spec, upload, tmp_path)
    spec["model"]["checkpoint"] = "hf-hub:org/clip"
    with pytest.raises(SpecError, match="'hf-hub:org/clip': Hugging Face Hub ids are not supported offline"):
        job_body(spec, upload, tmp_path)
    spec["model"]["checkpoint"] = "base.safetensors"
    labelled = [dict(spec["tasks"][0], eval="data.zip", eval_labels="ckpt"), spec["tasks"][1]]
    with pytest.raises(SpecError, match="tasks.0.eval_labels: .*ckpt is a folder; eval_labels must be a CSV"):
        job_body({**spec, "tasks": labelled}, upload, tmp_path)


def test_folders_are_zipped_the_same_way_and_known_files_reused(tmp_path: Path) -> None:
    """A folder of images goes up as a zip with stable bytes; a file the service already has
    (same sha256 and purpose) is not uploaded again."""
    _files(tmp_path)
    images = tmp_path / "images"
    (images / "0").mkdir(parents=True)
    for name in ("0/a.png", "b.png", ".DS_Store"):
        (images / name).write_bytes(name.encode())
    first, second = zip_folder(images, tmp_path / "1.zip"), zip_folder(images, tmp_path / "2.zip")
    assert first.read_bytes() == second.read_bytes()
    assert zipfile.ZipFile(first).namelist() == ["0/a.png", "b.png"]
    spec = {"model": {"arch": "x", "checkpoint": "base.safetensors"},
            "tasks": [{"name": n, "checkpoint": "a.safetensors", "unlabeled": "images",
                       "classnames": ["x", "y"]} for n in ("a", "b")]}
    uploaded: dict[str, tuple[str, bytes]] = {}  # sha256 -> (file id, bytes)
    said: list[str] = []

    def upload(path: Path, purpose: str) -> str:
        import hashlib

        data = path.read_bytes()
        uploaded[hashlib.sha256(data).hexdigest()] = (f"file-{len(uploaded)}", data)
        return f"file-{len(uploaded) - 1}"

    def find(sha256: str, purpose: str) -> str | None:
        return uploaded[sha256][0] if sha256 in uploaded else None

    body = job_body(spec, upload, tmp_path, find=find, say=said.append)
    assert len(uploaded) == 3 and body["tasks"][0]["unlabeled"] == body["tasks"][1]["unlabeled"]
    assert any("zipped the folder" in s for s in said)
    again = job_body(spec, upload, tmp_path, find=find, say=said.append)  # a rerun uploads nothing
    assert again == body and len(uploaded) == 3
    assert sum("already uploaded" in s for s in said) == 3


def test_report_table_orders_kinds_and_averages() -> None:
    report = {"job_id": "merge-1", "table": {
        "ties": {"t1": 0.5, "t2": 0.7, "average": 0.6},
        "merged": {"t1": 0.8, "t2": 0.9, "average": 0.85},
        "zero_shot": {"t1": 0.1, "t2": 0.2, "average": 0.15},
    }}
    lines = report_table(report).splitlines()
    assert lines[0].split() == ["task", "zero_shot", "merged", "ties"]
    assert lines[2].split() == ["t1", "10.0", "80.0", "50.0"]
    assert lines[-1].split() == ["average", "15.0", "85.0", "60.0"]
    assert "no evaluation" in report_table({"job_id": "merge-2", "table": {}})
