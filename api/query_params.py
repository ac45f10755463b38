"""Unknown query parameters are refused: 400 `unknown_query_parameter`, naming the parameter and
the valid ones, so that a typo (`?afer=`) or another endpoint's parameter (`?after=` on a stream)
is never silently ignored.

The valid names of an operation are its query parameters in the OpenAPI document (one place:
the route's own declaration), plus the name prefixes its `x-query-prefixes` extension lists
(`metadata.` on GET /v1/merges, whose keys are the caller's own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request

from calm.suggest import did_you_mean
from core.errors import ServiceError

PREFIXES_KEY = "x-query-prefixes"
# A credential in the query string is an authentication error (401), not a typo.
CREDENTIAL_NAMES = frozenset({"api_key", "apikey", "key", "token", "access_token", "authorization"})


@dataclass(frozen=True)
class Accepted:
    names: tuple[str, ...]
    prefixes: tuple[str, ...] = ()

    def accepts(self, key: str) -> bool:
        return key in self.names or any(key.startswith(p) and len(key) > len(p) for p in self.prefixes)

    def describe(self) -> str:
        valid = [*self.names, *(f"{p}<key>" for p in self.prefixes)]
        return f"valid: {', '.join(valid)}" if valid else "it takes no query parameters"


def prefixes(*names: str) -> dict[str, Any]:
    """`openapi_extra` of an operation that also takes every parameter starting with `names`."""
    return {PREFIXES_KEY: list(names)}


def _table(app: FastAPI) -> dict[tuple[str, str], Accepted]:
    """(METHOD, path template) -> what the operation accepts, read once from the OpenAPI document."""
    table: dict[tuple[str, str], Accepted] | None = getattr(app.state, "query_parameters", None)
    if table is None:
        table = {}
        for path, operations in app.openapi()["paths"].items():
            for method, op in operations.items():
                names = tuple(p["name"] for p in op.get("parameters", ()) if p.get("in") == "query")
                table[(method.upper(), path)] = Accepted(names, tuple(op.get(PREFIXES_KEY, ())))
        app.state.query_parameters = table
    return table


def reject_unknown_query(request: Request) -> None:
    """An app-wide dependency: 400 unknown_query_parameter for a query parameter the matched
    operation does not document."""
    if not request.query_params:
        return
    path = getattr(request.scope.get("route"), "path_format", None)
    accepted = _table(request.app).get((request.method, path)) if path else None
    if accepted is None:  # not in the OpenAPI document (docs pages): nothing to check against
        return
    unknown = [k for k in dict.fromkeys(request.query_params.keys()) if not accepted.accepts(k)]
    if not unknown:
        return
    if any(k.lower() in CREDENTIAL_NAMES for k in unknown):
        raise ServiceError(
            "invalid_api_key", "API keys are never read from the URL (it ends up in logs); send "
            "your key as 'Authorization: Bearer <key>'", 401, None, {"WWW-Authenticate": "Bearer"})
    hint = did_you_mean(unknown[0], accepted.names) if len(unknown) == 1 else ""
    names = ", ".join(repr(k[:64]) for k in unknown[:8])
    noun = "parameter" if len(unknown) == 1 else "parameters"
    raise ServiceError(
        "unknown_query_parameter",
        f"unknown query {noun} {names} for {request.method} {path};{hint} {accepted.describe()}",
        400,
        {"unknown": [k[:64] for k in unknown[:8]], "valid": list(accepted.names),
         "prefixes": list(accepted.prefixes)},
    )  # fmt: skip
