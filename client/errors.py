"""The client's one exception: a non-2xx answer from the service."""

from __future__ import annotations

import httpx


class ApiError(Exception):
    """A non-2xx answer: `status`, and the service's stable `code` + `message`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def api_error(r: httpx.Response) -> ApiError:
    """The ApiError for an error response (`{"error": {"code", "message"}}`, or its raw text)."""
    r.read()
    try:
        err = r.json()["error"]
        code, message = err["code"], err["message"]
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{r.status_code}", r.text[:500]
    return ApiError(r.status_code, code, message)
