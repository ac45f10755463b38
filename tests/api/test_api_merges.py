"""/v1/merges: validation before queueing, the message in the real broker, idempotency,
pagination, cancel, tenancy, files in use."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from svc_api import Service
from svc_fixtures import checkpoint_tensors, safetensors_bytes, zip_bytes

from api.main import create_app
from core import jobs
from core.models import MergeJob


def job_count(service: Service) -> int:
    with service.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        return session.query(MergeJob).filter(MergeJob.tenant_id.in_(service.tenants.values())).count()


def error_of(r: Any) -> tuple[int, str, str]:
    return r.status_code, r.json()["error"]["code"], r.json()["error"]["message"]


def test_create_queues_a_validated_job(service: Service) -> None:
    r = service.create(service.body(service.merge_inputs()))
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["id"].startswith("merge-") and job["status"] == "queued" and job["progress"] == 0.0
    assert job["request"]["options"]["epochs"] == 2 and job["request"]["options"]["ratio"] == 0.9
    assert job["error"] is None and job["result_files"] is None
    assert job["id"] in service.queued_job_ids()  # the message really landed in the broker
    got = service.client.get(f"/v1/merges/{job['id']}", headers=service.auth()).json()
    assert got["status"] == "queued" and got["created_at"] == job["created_at"]
    events = service.client.get(f"/v1/merges/{job['id']}/events", headers=service.auth()).json()
    assert [e["stage"] for e in events["data"]] == ["validating", "queued"]


def test_file_reference_errors_are_caught_before_queueing(service: Service) -> None:
    ids = service.merge_inputs()
    other = service.merge_inputs(who="b")
    head = service.file_id("head", "h.safetensors", safetensors_bytes({"weight": ("F32", [2, 32])}))
    cases = [
        (dict(ids, base="file-doesnotexist"), 404, "file_not_found", "model.checkpoint"),
        (dict(ids, base=other["base"]), 404, "file_not_found", "model.checkpoint"),  # b's file: not leaked
        (
            dict(ids, datasets=[ids["checkpoints"][0], ids["datasets"][1]]),
            400,
            "invalid_file_purpose",
            "tasks.0",
        ),
        (dict(ids, base=head), 400, "invalid_file_purpose", "model.checkpoint"),
    ]
    for refs, status, code, where in cases:
        got = error_of(service.create(service.body(refs)))
        assert got[:2] == (status, code) and where in got[2], got
    assert job_count(service) == 0 and service.queued_job_ids() == []


def test_checkpoint_mismatches_are_named(service: Service) -> None:
    ids = service.merge_inputs()
    table = checkpoint_tensors()
    table["visual.proj"] = ("F32", [16, 48])
    del table["logit_scale"]
    table["visual.extra"] = ("F16", [2])
    bad = service.file_id("checkpoint", "bad.safetensors", safetensors_bytes(table))
    status, code, message = error_of(
        service.create(service.body(dict(ids, checkpoints=[ids["checkpoints"][0], bad])))
    )
    assert (status, code) == (400, "checkpoint_mismatch")
    assert "tasks.1.checkpoint" in message and "'logit_scale'" in message and "'visual.extra'" in message
    assert "'visual.proj' is F32[16, 48]" in message
    narrow = service.file_id(
        "checkpoint", "n.safetensors", safetensors_bytes(checkpoint_tensors(embed_dim=64))
    )
    status, code, message = error_of(service.create(service.body(dict(ids, base=narrow))))
    assert (status, code) == (400, "checkpoint_mismatch") and "embed_dim 32" in message
    assert job_count(service) == 0


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"options": {"epochs": 0}}, "options.epochs"),
        ({"options": {"lr": "fast"}}, "options.lr"),
        ({"options": {"no_such_option": 1}}, "options.no_such_option"),
        ({"method": "magic"}, "method"),
        ({"seed": -1}, "seed"),
        ({"surprise": True}, "surprise"),
    ],
)
def test_bad_options_are_422_with_the_field_path(service: Service, change: dict[str, Any], loc: str) -> None:
    body = service.body(
        {"base": "file-x", "checkpoints": ["file-y", "file-z"], "datasets": ["file-u", "file-v"]}
    )
    r = service.create(body | change)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text
    assert any(d["loc"].startswith(loc) for d in r.json()["error"]["details"])


def test_spec_level_rules_are_enforced(service: Service) -> None:
    ids = service.merge_inputs()
    body = service.body(ids)
    one_task = dict(body, tasks=body["tasks"][:1])
    assert service.create(one_task).status_code == 422
    neither = dict(body, tasks=[dict(body["tasks"][0], classnames=None), body["tasks"][1]])
    r = service.create(neither)
    assert r.status_code == 422 and "give classnames" in r.json()["error"]["message"]
    too_many = dict(body, options={"num_sequential": 2})  # 2 tasks: K ≤ T−1 = 1
    r = service.create(too_many)
    assert r.status_code == 422
    assert "options.num_sequential: must be between 1 and T−1 = 1" in r.json()["error"]["message"]
    unknown_seq = dict(body, options={"sequential_tasks": ["nope"]})
    assert service.create(unknown_seq).status_code == 422
    same_names = dict(body, tasks=[body["tasks"][0], dict(body["tasks"][1], name="task0")])
    assert service.create(same_names).status_code == 422
    builtin = dict(body, model={"arch": "No-Such-Arch", "checkpoint": ids["base"]})
    assert error_of(service.create(builtin))[:2] == (400, "unknown_architecture")
    wide_head = service.file_id("head", "h.safetensors", safetensors_bytes({"weight": ("F32", [3, 64])}))
    with_head = dict(body, tasks=[dict(body["tasks"][0], classnames=None, head=wide_head), body["tasks"][1]])
    assert error_of(service.create(with_head))[:2] == (400, "head_mismatch")
    head = service.file_id("head", "h2.safetensors", safetensors_bytes({"weight": ("F32", [3, 32])}))
    named = dict(body, tasks=[dict(body["tasks"][0], classnames=["a", "b"], head=head),
                              body["tasks"][1]])
    status, code, message = error_of(service.create(named))
    assert (status, code) == (400, "head_mismatch") and "3 rows but the task lists 2" in message
    assert job_count(service) == 0


def test_idempotency_key(service: Service) -> None:
    body = service.body(service.merge_inputs())
    first = service.create(body, key="req-1")
    again = service.create(body, key="req-1")
    assert (first.status_code, again.status_code) == (201, 200) and again.json()["id"] == first.json()["id"]
    conflict = service.create(dict(body, seed=99), key="req-1")
    assert error_of(conflict)[:2] == (409, "idempotency_conflict")
    assert service.queued_job_ids().count(first.json()["id"]) == 1  # enqueued once
    assert service.create(body, key="req-2").json()["id"] != first.json()["id"]


def test_pagination(service: Service) -> None:
    body = service.body(service.merge_inputs())
    ids = [service.create(dict(body, seed=i)).json()["id"] for i in range(5)]
    seen, after = [], None
    while True:
        params = {"limit": 2} | ({"after": after} if after else {})
        page = service.client.get("/v1/merges", headers=service.auth(), params=params).json()
        assert len(page["data"]) <= 2
        seen += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            break
        after = page["next_cursor"]
    assert seen == ids[::-1]


def test_cancel(service: Service) -> None:
    body = service.body(service.merge_inputs())
    queued = service.create(body).json()["id"]
    r = service.client.post(f"/v1/merges/{queued}/cancel", headers=service.auth())
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["finished_at"]
    assert error_of(service.client.post(f"/v1/merges/{queued}/cancel", headers=service.auth()))[:2] == (
        409,
        "job_already_finished",
    )
    running = service.create(dict(body, seed=1)).json()["id"]
    with service.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        assert jobs.claim_job(session, running, "test-worker")
    r = service.client.post(f"/v1/merges/{running}/cancel", headers=service.auth())
    assert r.json()["status"] == "running" and r.json()["cancel_requested"] is True


def test_tenancy_of_jobs(service: Service) -> None:
    job = service.create(service.body(service.merge_inputs())).json()["id"]
    for method, path in [("GET", ""), ("POST", "/cancel"), ("GET", "/events"), ("GET", "/result")]:
        r = service.client.request(method, f"/v1/merges/{job}{path}", headers=service.auth("b"))
        assert error_of(r)[:2] == (404, "job_not_found"), (path, r.text)
    assert service.client.get("/v1/merges", headers=service.auth("b")).json()["data"] == []


def test_files_of_unfinished_jobs_cannot_be_deleted(service: Service) -> None:
    ids = service.merge_inputs()
    job = service.create(service.body(ids)).json()["id"]
    r = service.client.delete(f"/v1/files/{ids['base']}", headers=service.auth())
    assert error_of(r)[:2] == (409, "file_in_use") and job in r.json()["error"]["message"]
    service.client.post(f"/v1/merges/{job}/cancel", headers=service.auth())
    assert service.client.delete(f"/v1/files/{ids['base']}", headers=service.auth()).status_code == 204


def test_unreachable_broker_is_503_and_leaves_no_job(service: Service) -> None:
    """The API reads one settings object, its own (app.state.settings), for the broker too."""
    body = service.body(service.merge_inputs())
    down = create_app(service.settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))
    with TestClient(down) as client:  # nothing listens on port 1
        headers = service.auth() | {"Idempotency-Key": "retry-me"}
        r = client.post("/v1/merges", headers=headers, json=body)
    assert error_of(r)[:2] == (503, "queue_unavailable") and job_count(service) == 0
    again = service.create(body, key="retry-me")
    assert again.status_code == 201 and again.json()["id"] in service.queued_job_ids()


def test_dry_run_returns_the_plan_and_creates_nothing(service: Service) -> None:
    ids = service.merge_inputs()
    body = service.body(ids, run={"device": "cuda:3", "eval_batch_size": 32}, metadata={"k": "v"})
    r = service.create(body | {"dry_run": True}, key="dry")
    assert r.status_code == 200, r.text
    plan = r.json()
    assert plan["object"] == "merge_plan" and plan["merges"] == ["calm"]
    assert plan["tasks"] == ["task0", "task1"]
    assert plan["plan"][0].startswith("method calm on 2 tasks") and "fully sequential K=1" in plan["plan"][1]
    assert plan["run"]["device"] == service.settings.worker_device and plan["run"]["eval_batch_size"] == 32
    assert any("run.device 'cuda:3' is not used" in n for n in plan["notes"])
    assert "dry_run" not in plan["request"] and plan["request"]["options"]["epochs"] == 2
    assert job_count(service) == 0 and service.queued_job_ids() == []
    missing = service.body(dict(ids, base="file-doesnotexist")) | {"dry_run": True}
    assert error_of(service.create(missing))[:2] == (404, "file_not_found")  # the checks of a real POST
    assert service.create(body, key="dry").status_code == 201  # the key was not taken
    responses = service.client.get("/openapi.json").json()["paths"]["/v1/merges"]["post"]["responses"]
    assert "MergePlan" in json.dumps(responses["200"])


def test_eval_data_as_users_have_it_is_checked_before_queueing(service: Service) -> None:
    """Class-name or class-index folders, or a flat archive plus a `filename,label` CSV: labels
    resolved against the task's classes at POST time; notes for skipped and unlabelled files."""
    ids = service.merge_inputs()
    members = ["test/a.png", "test/b.png", "test/c.png", "notes.txt"]
    flat = service.file_id("eval", "flat.zip", zip_bytes(members))
    r = service.upload("eval", "labels.csv", b"filename,label\na.png,cat\nb.png,1\n")
    assert r.status_code == 201 and r.json()["metadata"] == {"rows": 2} and r.json()["format"] == "csv"
    good_csv = r.json()["id"]
    bad_csv = service.file_id("eval", "bad.csv", b"a.png,bird\nmissing.png,0\nc.png,5\n")
    named = service.file_id("eval", "named.zip", zip_bytes(["cat/a.png", "dog/b.png"]))
    odd = service.file_id("eval", "odd.zip", zip_bytes(["cat/a.png", "bird/b.png", "²/c.png"]))
    tensors = service.file_id("eval", "e.safetensors", safetensors_bytes(
        {"images": ("F32", [2, 3, 16, 16]), "labels": ("I64", [2])}))

    def body(**task0: Any) -> dict[str, Any]:
        b = service.body(ids)
        return dict(b, tasks=[dict(b["tasks"][0], **task0), b["tasks"][1]])

    r = service.create(body(eval=flat, eval_labels=good_csv) | {"dry_run": True})
    assert r.status_code == 200, r.text
    notes = r.json()["notes"]
    assert any(n.startswith("tasks.0.eval (flat.zip): 1 image(s) have no row in eval_labels")
               and "test/c.png" in n for n in notes), notes
    assert "tasks.0.eval (flat.zip): skipped 1 file that is not an image or hidden: notes.txt" in notes
    assert service.create(body(eval=named) | {"dry_run": True}).status_code == 200
    for task0, expected in (
        ({"eval": flat, "eval_labels": bad_csv},
         "tasks.0.eval (flat.zip) with tasks.0.eval_labels (bad.csv): 1 labelled file(s) are not images "
         "of the eval data: missing.png"),
        ({"eval": flat}, "tasks.0.eval (flat.zip): folder(s) test/ name no class"),
        ({"eval": odd}, "folder(s) bird/, ²/ name no class: a class folder is named by a class name "
                        "(cat, dog) or an index 0-1"),
        ({"eval": tensors, "eval_labels": good_csv}, "tasks.0.eval is a safetensors file"),
        ({"eval": flat, "eval_labels": flat}, "tasks.0.eval_labels must be a CSV file"),
    ):
        status, code, message = error_of(service.create(body(**task0)))
        assert (status, code) == (400, "invalid_eval_data") and expected in message, message
    bad_labels = service.file_id("eval", "bad2.csv", b"a.png,bird\nb.png,5\n")
    message = error_of(service.create(body(eval=flat, eval_labels=bad_labels)))[2]
    assert "2 label(s) name no class: a.png: 'bird', b.png: '5'; a label is a class name (cat, dog) or " \
           "an index 0-1" in message
    assert job_count(service) == 0
    r = service.create(body(eval=flat, eval_labels=good_csv))
    assert r.status_code == 201, r.text
    events = service.client.get(f"/v1/merges/{r.json()['id']}/events", headers=service.auth()).json()["data"]
    assert any(e["level"] == "warning" and "notes.txt" in e["message"] for e in events)
    unlabeled = service.file_id("dataset", "u.zip", zip_bytes(["x/a.png", "readme.md"]))
    r = service.create(service.body(dict(ids, datasets=[unlabeled, ids["datasets"][1]])))
    assert r.status_code == 201, r.text


def test_merge_body_errors_say_what_to_do(service: Service) -> None:
    """The library's messages (calm.spec_errors), with the body's field paths."""
    refs = {"base": "file-x", "checkpoints": ["file-y", "file-z"], "datasets": ["file-u", "file-v"]}
    body = service.body(refs)
    for change, expected in (
        ({"method": "ties", "options": {"epochs": 3}},
         "options.epochs: 'epochs' is an option of 'calm', not of 'ties'; method 'ties' takes: scaling"),
        ({"options": {"num_sequentail": 1}}, "options.num_sequentail: unknown option for method 'calm'; "
                                             "did you mean 'num_sequential'"),
        ({"method": "tie"}, "method: unknown method 'tie'; did you mean 'ties'?"),
        ({"device": "cpu"}, "device: 'device' is a run option"),
        ({"tasks": [dict(body["tasks"][0], name="a/b"), body["tasks"][1]]},
         "tasks.0.name: 'a/b' is not a task name"),
    ):
        status, code, message = error_of(service.create(body | change))
        assert (status, code) == (422, "invalid_request") and expected in message, message
