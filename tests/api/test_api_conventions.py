"""What every endpoint shares: one cursor style, unknown query parameters refused, the merge
list's filters, and an example for every request body in the OpenAPI document."""

from __future__ import annotations

from typing import Any

import pytest
from svc_api import Service

from api.upload_schemas import UploadComplete, UploadCreate
from core.job_request import JobCreate


def error(r: Any) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


@pytest.mark.parametrize(("path", "query", "unknown"), [
    ("/v1/merges/{job}", "after=3", "after"),
    ("/v1/merges/{job}/result", "after=3", "after"),
    ("/v1/merges", "afer=x", "afer"),
    ("/v1/merges", "metadata=x", "metadata"),  # a prefix, not a parameter
    ("/v1/files", "purpose=checkpoint&cursor=x", "cursor"),
    ("/healthz", "verbose=1", "verbose"),
])  # fmt: skip
def test_unknown_query_parameters_are_400_naming_the_valid_ones(
    service: Service, path: str, query: str, unknown: str
) -> None:
    job = service.create(service.body(service.merge_inputs())).json()["id"]
    r = service.client.get(f"{path.format(job=job)}?{query}", headers=service.auth())
    assert error(r) == (400, "unknown_query_parameter")
    body = r.json()["error"]
    assert body["details"]["unknown"] == [unknown] and repr(unknown) in body["message"]
    if path == "/v1/merges":
        assert body["details"]["valid"] == ["after", "limit", "status"]
        assert body["details"]["prefixes"] == ["metadata."] and "metadata.<key>" in body["message"]
    if unknown == "afer":
        assert "did you mean 'after'?" in body["message"]


def test_invalid_values_of_known_parameters_are_422(service: Service) -> None:
    for query in ("status=bogus", "status=queued&status=bogus", "limit=0", "after=../x",
                  f"metadata.{'k' * 65}=v", "metadata.k=" + "v" * 513):  # fmt: skip
        r = service.client.get(f"/v1/merges?{query}", headers=service.auth())
        assert error(r) == (422, "invalid_request"), query
    r = service.client.get("/v1/merges?status=bogus", headers=service.auth())
    assert "'queued'" in r.json()["error"]["message"]  # the valid statuses are named


def test_the_merge_list_filters_by_status_and_metadata(service: Service) -> None:
    ids = service.merge_inputs()
    labels = [{"project": "alpha", "owner": "ann"}, {"project": "alpha", "owner": "bob"},
              {"project": "beta", "owner": "ann"}, {"project": "a.b \"q\"", "odd key.x": "1"}]  # fmt: skip
    jobs = [service.create(service.body(ids, metadata=m)).json()["id"] for m in labels]
    cancelled = service.client.post(f"/v1/merges/{jobs[1]}/cancel", headers=service.auth()).json()
    assert cancelled["status"] == "cancelled"

    def listed(query: str) -> list[str]:
        r = service.client.get(f"/v1/merges?{query}", headers=service.auth())
        assert r.status_code == 200, r.text
        return [j["id"] for j in r.json()["data"]]

    newest_first = jobs[::-1]
    assert listed("") == newest_first
    assert listed("status=cancelled") == [jobs[1]]
    assert listed("status=cancelled&status=queued") == newest_first
    assert listed("status=succeeded") == []
    assert listed("metadata.project=alpha") == [jobs[1], jobs[0]]
    assert listed("metadata.project=alpha&metadata.owner=ann") == [jobs[0]]
    assert listed("metadata.project=alpha&metadata.project=beta") == [jobs[2], jobs[1], jobs[0]]
    assert listed("metadata.project=alpha&status=queued") == [jobs[0]]
    assert listed("metadata.project=ALPHA") == [] and listed("metadata.nope=alpha") == []
    assert listed("metadata.project=a.b%20%22q%22&metadata.odd%20key.x=1") == [jobs[3]]
    assert service.client.get("/v1/merges?metadata.project=alpha", headers=service.auth("b")).json()[
        "data"] == []  # fmt: skip
    page = service.client.get("/v1/merges?metadata.owner=ann&limit=1", headers=service.auth()).json()
    assert [j["id"] for j in page["data"]] == [jobs[2]] and page["has_more"]
    nxt = listed(f"metadata.owner=ann&limit=1&after={page['next_cursor']}")  # the cursor, filtered
    assert nxt == [jobs[0]]


def test_every_list_pages_with_after_and_next_cursor(service: Service) -> None:
    """Files, merges and events: `next_cursor` of a page is the `after` of the next."""
    ids = service.merge_inputs()
    job = service.create(service.body(ids)).json()["id"]
    service.create(service.body(ids))
    service.client.post(f"/v1/merges/{job}/cancel", headers=service.auth())
    for url in ("/v1/files", "/v1/merges", f"/v1/merges/{job}/events"):
        whole = service.client.get(url, headers=service.auth()).json()["data"]
        assert len(whole) >= 2, url
        got, params = [], {"limit": 1}
        while True:
            page = service.client.get(url, headers=service.auth(), params=params).json()
            assert set(page) >= {"data", "has_more", "next_cursor"}, url
            got += page["data"]
            if not page["has_more"]:
                break
            params = {"limit": 1, "after": page["next_cursor"]}
        assert got == whole, url


def test_every_request_body_has_an_example_that_is_valid(service: Service) -> None:
    spec = service.client.get("/openapi.json").json()
    models = {("post", "/v1/merges"): JobCreate, ("post", "/v1/uploads"): UploadCreate,
              ("post", "/v1/uploads/{upload_id}/complete"): UploadComplete}  # fmt: skip
    bodies = 0
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if "requestBody" not in op:
                continue
            for media, content in op["requestBody"]["content"].items():
                bodies += 1
                examples = content.get("examples") or {}
                assert examples or "example" in content, (method, path, media)
                for name, ex in examples.items():
                    assert ex.get("summary") and ("value" in ex or "externalValue" in ex), (path, name)
                    model = models.get((method, path))
                    if model is not None and media == "application/json":
                        model.model_validate(ex["value"])  # a request the service takes
    assert bodies >= 6  # files (form, raw), uploads, parts, complete, merges


def test_the_stream_documents_its_events(service: Service) -> None:
    spec = service.client.get("/openapi.json").json()
    op = spec["paths"]["/v1/merges/{job_id}/events/stream"]["get"]
    items = op["responses"]["200"]["content"]["text/event-stream"]["itemSchema"]["oneOf"]
    kinds = {i["properties"]["event"]["const"]: i["properties"]["data"]["contentSchema"]["$ref"]
             for i in items}  # fmt: skip
    assert kinds == {"progress": "#/components/schemas/EventPublic", "end": "#/components/schemas/JobPublic"}
    assert {"EventPublic", "JobPublic"} <= set(spec["components"]["schemas"])
    params = {p["name"]: p for p in op["parameters"]}
    assert params["after"]["in"] == "query" and params["after_seq"]["deprecated"] is True
    assert params["last-event-id"]["in"] == "header"


def test_a_key_in_the_query_string_is_401_with_the_header_to_use(service: Service) -> None:
    for headers in ({}, service.auth()):
        r = service.client.get(f"/v1/files?api_key={service.keys['a']}", headers=headers)
        assert error(r) == (401, "invalid_api_key")
        assert "Authorization: Bearer" in r.json()["error"]["message"]
        assert r.headers["www-authenticate"] == "Bearer"
