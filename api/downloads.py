"""Blob downloads with HTTP Range (single and multiple ranges -> 206, unsatisfiable -> 416).

A blob with a local file (LocalStorage) is served by Starlette's FileResponse (sendfile,
multiple ranges); one in object storage is streamed from a ranged GET (a single range -> 206;
several ranges are answered with the whole body, as RFC 9110 allows).
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from core.errors import ServiceError
from core.storage import Storage


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


class BlobFileResponse(FileResponse):
    """Starlette's FileResponse reading 4 MiB per thread hop instead of 64 KiB (a 100 MB file
    takes 25 hops, not 1600): download throughput 0.28x -> 0.59x a raw loopback copy in
    bench.api_load."""

    chunk_size = 4 << 20


def _gone() -> ServiceError:
    return ServiceError("content_missing", "the stored bytes are gone; upload them again", 410)


def _check_range(request: Request, size: int) -> str | None:
    """The Range header to honour (None: serve the whole blob); 416 when unsatisfiable."""
    header = request.headers.get("range")
    if header is None:
        return None
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
        return None
    return header


def download(
    request: Request, storage: Storage, key: str, filename: str, etag: str | None = None
) -> Response:
    """The blob `key` as an attachment, honouring Range (and If-Range for local files)."""
    headers = {"ETag": f'"{etag}"'} if etag else {}
    path = storage.local_file(key)
    if path is not None:
        if not path.is_file():
            raise _gone()
        _check_range(request, path.stat().st_size)
        media = "application/octet-stream"
        return BlobFileResponse(path, media_type=media, filename=filename, headers=headers)
    try:
        size = storage.size(key)
    except FileNotFoundError:
        raise _gone() from None
    return _stream(request, storage, key, size, filename, headers)


def _single_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end) of a one-range header, clamped to the blob; None for several ranges."""
    spec = header.partition("=")[2].strip()
    if "," in spec:
        return None
    start, _, end = spec.partition("-")
    if not start:  # the last N bytes
        return max(size - int(end), 0), size - 1
    return int(start), min(int(end), size - 1) if end else size - 1


def _stream(request: Request, storage: Storage, key: str, size: int, filename: str,
            headers: dict[str, str]) -> StreamingResponse:  # fmt: skip
    header = _check_range(request, size)
    if_range = request.headers.get("if-range")
    if header and if_range is not None and if_range != headers.get("ETag"):
        header = None  # the client's copy is outdated: send it all
    span = _single_range(header, size) if header else None
    name = quote(filename)
    disposition = f'attachment; filename="{name}"'
    if name != filename:
        disposition = f"attachment; filename*=utf-8''{name}"
    headers = {**headers, "Accept-Ranges": "bytes", "Content-Disposition": disposition}
    if span is None:
        body = storage.read_range(key, 0, size - 1) if size else iter([b""])
        headers["Content-Length"] = str(size)
        return StreamingResponse(body, media_type="application/octet-stream", headers=headers)
    start, end = span
    headers.update({"Content-Range": f"bytes {start}-{end}/{size}", "Content-Length": str(end - start + 1)})
    return StreamingResponse(storage.read_range(key, start, end), status_code=206,
                             media_type="application/octet-stream", headers=headers)  # fmt: skip
