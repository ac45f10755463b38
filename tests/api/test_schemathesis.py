"""Schemathesis against the app in process: generated requests (valid and invalid by the schema)
to every operation, with a real API key, checked for server errors, undocumented statuses and
content types, and responses that break their schema. Deterministic (derandomized) and bounded
(a few examples per operation, well under a minute)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS as CHECK_REGISTRY
from svc_fixtures import checkpoint_tensors, safetensors_bytes

from api.main import create_app
from core.admin import create_tenant
from core.db import migrate
from core.settings import Settings

EXAMPLES = 6
CHECKS = (
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_schema_conformance", "response_headers_conformance",
)  # fmt: skip


@pytest.fixture(scope="module")
def app_and_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    root = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{root / 'calm.db'}"
    migrate(url)
    app = create_app(Settings(database_url=url, storage_dir=root / "storage", broker_dir=root / "broker",
                              rate_limit_per_s=1e6, rate_limit_burst=10**6))  # fmt: skip
    with app.state.sessionmaker() as session:
        _, key = create_tenant("fuzz", session=session)
        session.commit()
    with TestClient(app) as client:  # a real file, so some ids exist
        files = {"file": ("c.safetensors", safetensors_bytes(checkpoint_tensors()))}
        r = client.post("/v1/files", headers={"Authorization": f"Bearer {key}"},
                        data={"purpose": "checkpoint"}, files=files)  # fmt: skip
        assert r.status_code == 201
        yield app, key


def _operations(app: Any) -> list[Any]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_the_api_keeps_its_contract(app_and_key: tuple[Any, str], mode: GenerationMode) -> None:
    app, key = app_and_key
    checks = [c for c in CHECK_REGISTRY.get_all() if c.__name__ in CHECKS]
    failures: dict[str, str] = {}
    operations = _operations(app)
    assert len(operations) >= 20
    auth = {"Authorization": f"Bearer {key}"}
    for op in operations:

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate])  # fmt: skip
        def run(case: Any) -> None:
            case.call_and_validate(headers={**(case.headers or {}), **auth}, checks=checks)

        try:
            run()
        except Unsatisfiable:  # nothing to make invalid (e.g. GET /healthz has no parameters)
            continue
        except Exception as e:  # a check failed: collect them all, report together
            failures[op.label] = str(e)[:3000]
    assert failures == {}


def test_every_operation_documents_the_error_envelope(app_and_key: tuple[Any, str]) -> None:
    spec = TestClient(app_and_key[0]).get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, op in ops.items():
            codes = set(op["responses"])
            assert {"401", "422", "429"} <= codes, (method, path, codes)
            for code in codes - {"200", "201", "204", "206"}:
                ref = op["responses"][code]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorResponse"), (method, path, code)
            assert "Retry-After" in op["responses"]["429"]["headers"]


def test_downloads_document_their_content_types(app_and_key: tuple[Any, str]) -> None:
    """The OpenAPI document names the binary content types of downloads."""
    spec = TestClient(app_and_key[0]).get("/openapi.json").json()
    masks = spec["paths"]["/v1/merges/{job_id}/masks"]["get"]["responses"]["200"]["content"]
    assert {"application/json", "application/octet-stream"} <= set(masks)
    content = spec["paths"]["/v1/files/{file_id}/content"]["get"]["responses"]
    assert "application/octet-stream" in content["200"]["content"] and "416" in content
