"""File downloads with HTTP Range (single and multiple ranges -> 206, unsatisfiable -> 416)."""

from __future__ import annotations

from pathlib import Path

from fastapi import Request
from fastapi.responses import FileResponse

from core.errors import ServiceError


def _satisfiable(header: str, size: int) -> bool | None:
    """None when the header is not a byte-range header we honour (then it is ignored)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec.strip():
        return None
    for part in spec.split(","):
        start, dash, end = part.strip().partition("-")
        if not dash or not (start.isdigit() or (not start and end.isdigit())):
            return None
        if end and not end.isdigit():
            return None
        if start and int(start) < size and (not end or int(end) >= int(start)):
            return True
        if not start and int(end) > 0 and size > 0:
            return True
    return False


def download(request: Request, path: Path, filename: str, etag: str | None = None) -> FileResponse:
    """A streaming FileResponse of `path` that honours Range / If-Range."""
    if not path.is_file():
        raise ServiceError("content_missing", "the stored bytes are gone; upload them again", 410)
    size = path.stat().st_size
    header = request.headers.get("range")
    headers = {"ETag": f'"{etag}"'} if etag else None
    if header is not None:
        ok = _satisfiable(header, size)
        if ok is False:
            raise ServiceError(
                "range_not_satisfiable",
                f"the requested range is outside the {size}-byte file",
                416,
                headers={"Content-Range": f"bytes */{size}"},
            )
        if ok is None:  # malformed or another unit: serve the whole file (RFC 9110 §14.2)
            request.scope["headers"] = [(k, v) for k, v in request.scope["headers"] if k != b"range"]
    return FileResponse(path, media_type="application/octet-stream", filename=filename, headers=headers)
