"""Events (paginated + SSE), result download with Range, masks and report. Jobs are driven
through core.jobs exactly as the worker drives them (claim, progress, artifacts, finish)."""

from __future__ import annotations

import io
import json
import os
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

from httpx_sse import connect_sse
from svc_api import Service
from svc_fixtures import safetensors_bytes

from api import archive
from core import jobs

MERGED = safetensors_bytes({"visual.proj": ("F32", [16, 32]), "logit_scale": ("F32", [])}, seed=3)
MASKS = safetensors_bytes({"task1::visual.proj": ("U8", [16, 32])}, seed=5)
REPORT = {
    "accuracy": {"merged": {"task0": 0.8, "task1": 0.6}, "individual": {"task0": 0.9, "task1": 0.7}},
    "samples": {"task0": 10, "task1": 20},
    "method": "calm",
}


def run_job(service: Service, job_id: str, finish: bool = True) -> None:
    """What the worker does, through core.jobs and storage."""
    with service.client.app.state.sessionmaker() as s:  # type: ignore[attr-defined]
        assert jobs.claim_job(s, job_id, "test-worker")
        jobs.update_progress(s, job_id, "pseudo_labels", 0.2, "labelling", {"kept": 0.9})
        jobs.update_progress(s, job_id, "mask:task1", 0.6, "epoch 1/2", {"loss": 0.5}, min_interval_s=0)
        if not finish:
            return
        prefix = jobs.result_prefix(job_id)
        storage = service.storage
        keys = {
            name: f"{prefix}/{name}" for name in ("merged.safetensors", "masks.safetensors", "report.json")
        }
        storage.write_stream(keys["merged.safetensors"], [MERGED])
        storage.write_stream(keys["masks.safetensors"], [MASKS])
        storage.write_stream(keys["report.json"], [json.dumps(REPORT).encode()])
        jobs.record_masks(s, job_id, "task1", keys["masks.safetensors"], {"visual.proj": 0.25}, 0.25)
        jobs.record_evaluations(s, job_id, REPORT)
        paths = {"merged": keys["merged.safetensors"], "masks": keys["masks.safetensors"]}
        paths["report"] = str(storage.path(keys["report.json"]))  # absolute paths work too
        assert jobs.finish_job(s, job_id, "succeeded", result_paths=paths, storage=storage)


def new_job(service: Service) -> str:
    r = service.create(service.body(service.merge_inputs()))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def sse(service: Service, job: str, headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """(event, id, data) of every event of the job's stream, read with httpx-sse."""
    url = f"/v1/merges/{job}/events/stream"
    with connect_sse(service.client, "GET", url, headers=service.auth() | (headers or {}),
                     params=params) as source:  # fmt: skip
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        return [(e.event, e.id, e.json()) for e in source.iter_sse() if e.data]


def test_result_is_409_until_success_then_downloadable_with_range(service: Service) -> None:
    job = new_job(service)
    for path in ("/result", "/masks", "/report"):
        r = service.client.get(f"/v1/merges/{job}{path}", headers=service.auth())
        assert r.status_code == 409 and r.json()["error"]["code"] == "job_not_finished"
    run_job(service, job)
    got = service.client.get(f"/v1/merges/{job}", headers=service.auth()).json()
    assert (got["status"], got["progress"], got["stage"]) == ("succeeded", 1.0, "done")
    assert got["result_files"]["merged"] == f"/v1/merges/{job}/result"
    full = service.client.get(f"/v1/merges/{job}/result", headers=service.auth())
    assert full.status_code == 200 and full.content == MERGED and full.headers["accept-ranges"] == "bytes"
    part = service.client.get(f"/v1/merges/{job}/result", headers=service.auth() | {"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == MERGED[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(MERGED)}"
    r = service.client.get(f"/v1/merges/{job}/result", headers=service.auth("b"))
    assert r.status_code == 404


def test_masks_and_report(service: Service) -> None:
    job = new_job(service)
    run_job(service, job)
    masks = service.client.get(f"/v1/merges/{job}/masks", headers=service.auth()).json()
    assert masks["data"] == [{"task": "task1", "overall_density": 0.25, "density": {"visual.proj": 0.25}}]
    file = service.client.get(masks["download"], headers=service.auth())
    assert file.status_code == 200 and file.content == MASKS
    report = service.client.get(f"/v1/merges/{job}/report", headers=service.auth()).json()
    assert report["table"]["merged"] == {"task0": 0.8, "task1": 0.6, "average": 0.7}
    assert {(e["model_kind"], e["task"], e["samples"]) for e in report["evaluations"]} >= {
        ("merged", "task1", 20)
    }
    assert report["report"] == REPORT


def test_failed_job_has_error_and_no_result(service: Service) -> None:
    job = new_job(service)
    run_job(service, job, finish=False)
    with service.client.app.state.sessionmaker() as s:  # type: ignore[attr-defined]
        jobs.finish_job(s, job, "failed", "invalid_data", "task1's head has NaN values")
    got = service.client.get(f"/v1/merges/{job}", headers=service.auth()).json()
    assert got["status"] == "failed"
    assert got["error"] == {"code": "invalid_data", "message": "task1's head has NaN values"}
    r = service.client.get(f"/v1/merges/{job}/result", headers=service.auth())
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_not_succeeded"
    assert service.client.get(f"/v1/merges/{job}/report", headers=service.auth()).json()["evaluations"] == []


def test_event_pagination(service: Service) -> None:
    job = new_job(service)
    run_job(service, job)
    url = f"/v1/merges/{job}/events"
    everything = service.client.get(url, headers=service.auth(), params={"limit": 500}).json()["data"]
    assert [e["seq"] for e in everything] == list(range(1, len(everything) + 1))
    assert everything[-1]["message"] == "succeeded" and everything[3]["metrics"] == {"kept": 0.9}
    page = service.client.get(url, headers=service.auth(), params={"limit": 2}).json()
    seen = []
    while True:  # the cursor of every list: next_cursor -> after
        seen += [e["seq"] for e in page["data"]]
        if not page["has_more"]:
            break
        page = service.client.get(url, headers=service.auth(),
                                  params={"after": page["next_cursor"], "limit": 2}).json()  # fmt: skip
    assert seen == [e["seq"] for e in everything]
    assert page["next_cursor"] == str(seen[-1])  # set on the last page too: poll on with it
    page = service.client.get(url, headers=service.auth(), params={"after": 2, "limit": 2}).json()
    assert [e["seq"] for e in page["data"]] == [3, 4] and page["has_more"] and page["next_cursor"] == "4"
    old = service.client.get(url, headers=service.auth(), params={"after_seq": 2, "limit": 2}).json()
    assert old["data"] == page["data"] and old["next_after_seq"] == 4  # the deprecated alias
    both = service.client.get(url, headers=service.auth(), params={"after": 2, "after_seq": 3})
    assert both.status_code == 422 and "after_seq" in both.json()["error"]["message"]


def test_sse_stream_of_a_finished_job(service: Service) -> None:
    job = new_job(service)
    run_job(service, job)
    events = sse(service, job, headers={"Last-Event-ID": "2"})
    assert events[0][2]["seq"] == 3 and all(kind == "progress" for kind, _, _ in events[:-1])
    assert [i for _, i, _ in events[:-1]] == [str(d["seq"]) for _, _, d in events[:-1]]  # id: the seq
    assert events[-1][0] == "end" and events[-1][2]["status"] == "succeeded"
    assert sse(service, job, params={"after": 2}) == events  # ?after= is the same cursor
    assert sse(service, job, params={"after": 1}, headers={"Last-Event-ID": "2"}) == events  # the later


def test_sse_resumes_with_the_last_event_id(service: Service) -> None:
    """Read part of the stream, drop it, reconnect with Last-Event-ID: every event exactly once."""
    job = new_job(service)
    run_job(service, job)
    url = f"/v1/merges/{job}/events/stream"
    with connect_sse(service.client, "GET", url, headers=service.auth()) as source:
        first = []
        for e in source.iter_sse():
            if e.data:  # not the opening `retry:` frame
                first.append(e)
            if len(first) == 2:
                break
    rest = sse(service, job, headers={"Last-Event-ID": first[-1].id})
    seqs = [e.json()["seq"] for e in first] + [d["seq"] for kind, _, d in rest if kind == "progress"]
    assert seqs == list(range(1, len(seqs) + 1)) and rest[-1][0] == "end"


def test_sse_stream_follows_a_live_job(service: Service) -> None:
    job = new_job(service)

    def worker() -> None:
        time.sleep(0.3)
        run_job(service, job)

    thread = threading.Thread(target=worker)
    thread.start()
    events = sse(service, job)
    thread.join()
    stages = [data.get("stage") for kind, _, data in events if kind == "progress"]
    assert stages[:2] == ["validating", "queued"] and "mask:task1" in stages
    assert events[-1][0] == "end" and events[-1][2]["status"] == "succeeded"


def test_sse_refusals_are_json_before_the_stream(service: Service) -> None:
    """A job of another tenant, a bad cursor, an unknown parameter: JSON errors, no stream."""
    job = new_job(service)
    url = f"/v1/merges/{job}/events/stream"
    cases = [({**service.auth("b")}, {}, 404, "job_not_found"),
             ({**service.auth(), "Last-Event-ID": "x1"}, {}, 422, "invalid_request"),
             ({**service.auth(), "Last-Event-ID": "9" * 41}, {}, 422, "invalid_request"),
             (service.auth(), {"after": -1}, 422, "invalid_request"),
             (service.auth(), {"limit": 5}, 400, "unknown_query_parameter")]  # fmt: skip
    for headers, params, status, code in cases:
        r = service.client.get(url, headers=headers, params=params)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text


def test_report_html_and_archive(service: Service, tmp_path: Path) -> None:
    job = new_job(service)
    for path in ("/report.html", "/archive"):
        r = service.client.get(f"/v1/merges/{job}{path}", headers=service.auth())
        assert r.status_code == 409 and r.json()["error"]["code"] == "job_not_finished"
    run_job(service, job)
    r = service.client.get(f"/v1/merges/{job}/report.html", headers=service.auth())
    assert r.status_code == 410 and r.json()["error"]["code"] == "result_missing"  # an older job
    page = b"<!DOCTYPE html><html><body><svg class='chart'></svg></body></html>\n"
    extra = {"report.html": page, "README.md": b"# card\n", "spec.json": b"{}\n"}
    for name, data in extra.items():
        service.storage.write_stream(f"{jobs.result_prefix(job)}/{name}", [data])
    r = service.client.get(f"/v1/merges/{job}/report.html", headers=service.auth())
    assert r.status_code == 200 and r.content == page
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert service.client.get(f"/v1/merges/{job}/report.html", headers=service.auth("b")).status_code == 404

    r = service.client.get(f"/v1/merges/{job}/archive", headers=service.auth())
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert f'filename="{job}-results.zip"' in r.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert zf.testzip() is None
        got = {info.filename: zf.read(info) for info in zf.infolist()}
    # every file of the folder, in calm.result_files order, under one folder named after the job
    assert list(got) == [f"{job}/{n}" for n in ("merged.safetensors", "masks.safetensors", "report.json",
                                                 "spec.json", "README.md", "report.html")]
    assert got[f"{job}/merged.safetensors"] == MERGED and got[f"{job}/report.html"] == page
    links = service.client.get(f"/v1/merges/{job}", headers=service.auth()).json()["result_files"]
    assert links["report_html"] == f"/v1/merges/{job}/report.html" and links["archive"].endswith("/archive")


def test_zip_stream_is_a_valid_archive_in_many_chunks(tmp_path: Path) -> None:
    big, text = tmp_path / "w.safetensors", tmp_path / "r.json"
    big.write_bytes(os.urandom(archive.CHUNK * 2 + 123))
    text.write_text('{"a": 1}\n' * 1000)
    files = [(f"x/{p.name}", p.stat().st_size, p.open("rb").__enter__) for p in (big, text)]
    chunks = list(archive.zip_stream(files))
    assert len(chunks) > 3
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        assert zf.read("x/w.safetensors") == big.read_bytes() and zf.read("x/r.json") == text.read_bytes()
    assert infos["x/w.safetensors"].compress_type == zipfile.ZIP_STORED
    assert infos["x/r.json"].compress_type == zipfile.ZIP_DEFLATED
