"""Every error is JSON: {"error": {"code": "<stable>", "message": "<actionable>"}}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from calm.errors import CalmError
from calm.spec_errors import explain_errors
from core.errors import ServiceError


class ErrorBody(BaseModel):
    code: str = Field(description="Stable, machine-readable, e.g. 'checkpoint_mismatch' (docs/errors.md).")
    message: str = Field(description="What went wrong and how to fix it.")
    details: Any | None = Field(default=None, description="Field errors ({loc, message}) and the like.")


class ErrorResponse(BaseModel):
    error: ErrorBody

log = logging.getLogger("calm.api")
MERGES_PATH = "/v1/merges"  # its body is the merge spec: errors explained by calm.spec_errors
HTTP_CODES = {
    400: "bad_request",
    401: "invalid_api_key",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    429: "rate_limited",
}
DESCRIPTIONS = {
    400: "Bad request: the input cannot be used (see error.code).",
    401: "Missing, unknown, revoked or expired API key (invalid_api_key).",
    404: "No such resource for this tenant (another tenant's ids are 404 too).",
    409: "Conflict with the resource's current state.",
    410: "The stored bytes are gone.",
    413: "Request, file or upload part too large.",
    416: "Range not satisfiable.",
    422: "The request does not match the schema (invalid_request; error.details lists fields).",
    429: "Rate limit or quota exceeded; retry after `Retry-After` seconds.",
    503: "A service this request needs (the queue) is unreachable; nothing was created.",
}
ERROR_REF = "#/components/schemas/ErrorResponse"  # registered by every other operation
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}}


def responses(*statuses: int, json_content: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error `statuses`, each with the error envelope. FastAPI documents a
    `model` under the route's media type; a route whose own type is not JSON (a stream) takes
    `json_content=True`: the envelope by reference, as application/json."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"description": DESCRIPTIONS[status]}
        if json_content:
            entry["content"] = {"application/json": {"schema": {"$ref": ERROR_REF}}}
        else:
            entry["model"] = ErrorResponse
        if status == 429:
            entry["headers"] = RETRY_AFTER
        out[status] = entry
    return out


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _loc(parts: tuple[Any, ...]) -> str:
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(str(p) for p in parts)


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


async def _calm_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CalmError)
    return error_response(400, exc.code, exc.message)


def _merge_body_details(exc: RequestValidationError) -> list[dict[str, str]] | None:
    """A merge request's errors as calm.spec_errors explains them (did you mean, valid names,
    full option paths) — the same messages as `calm-merge` and `calm-client`."""
    errors = [{**e, "loc": tuple(e.get("loc", ()))[1:]} for e in exc.errors()]
    if not errors or any(tuple(e.get("loc", ()))[:1] != ("body",) for e in exc.errors()):
        return None
    from core.job_request import JobCreate

    return [{"loc": p.loc, "message": p.message} for p in explain_errors(errors, exc.body, JobCreate)]


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = _merge_body_details(exc) if request.url.path.rstrip("/") == MERGES_PATH else None
    if details is None:
        details = [{"loc": _loc(tuple(e.get("loc", ()))), "message": e.get("msg", "")} for e in exc.errors()]
    text = "; ".join(f"{d['loc']}: {d['message']}" if d["loc"] else d["message"] for d in details)
    return error_response(422, "invalid_request", text or "invalid request", details)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error; it has been logged")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(CalmError, _calm_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
