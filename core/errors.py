"""The service's error type: a stable code, a message a person can act on, an HTTP status."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Raised by core/ and api/; the API renders it as {"error": {"code", "message"}}."""

    def __init__(
        self,
        code: str,
        message: str,
        status: int = 400,
        details: Any | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.headers = headers
        self.code = code
        self.message = message
        self.status = status
        self.details = details


def not_found(kind: str, ident: str) -> ServiceError:
    """404 for a missing id *or another tenant's* id: existence is never leaked."""
    return ServiceError(f"{kind}_not_found", f"no {kind} with id {ident!r}", status=404)
