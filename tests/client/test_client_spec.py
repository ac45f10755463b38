"""The client's torch-free parts: spec -> job body (uploads each local file once) and the
report table."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.display import report_table
from client.spec import job_body, load_spec


def test_job_body_uploads_each_local_file_once_and_keeps_file_ids(tmp_path: Path) -> None:
    for name in ("base.safetensors", "a.safetensors", "b.safetensors", "data.zip", "eval.npz"):
        (tmp_path / name).write_bytes(name.encode())
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(
        "model: {arch: ViT-B-32, checkpoint: base.safetensors}\n"
        "device: cuda\n"
        "tasks:\n"
        "  - {name: a, checkpoint: a.safetensors, unlabeled: data.zip, classnames: [x, y],"
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
    assert body["model"] == {"arch": "ViT-B-32", "checkpoint": "file-1"}
    assert body["tasks"][0] == {"name": "a", "checkpoint": "file-2", "unlabeled": "file-3",
                                "classnames": ["x", "y"], "eval": "file-4"}
    assert body["tasks"][1]["unlabeled"] == "file-3"  # the same file, uploaded once
    assert body["tasks"][1]["eval"] == "file-already-uploaded"
    assert "device" not in body and body["options"] == {"epochs": 5}


def test_job_body_names_a_missing_file(tmp_path: Path) -> None:
    spec = {"model": {"arch": "x", "checkpoint": "nope.safetensors"}, "tasks": []}
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        job_body(spec, lambda p, purpose: "file-1", tmp_path)


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
