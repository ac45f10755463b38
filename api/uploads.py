"""Streams an upload body straight into storage (no spooling to a temp file and copying).

Two request forms:
- `multipart/form-data` with a `file` part (and optionally a `purpose` field), parsed
  incrementally from `request.stream()` with python-multipart's callback parser;
- any other content type: the raw body is the file (`?purpose=...&filename=...`).
Bytes go to a storage writer that hashes, counts and caps them on the way; the writer is
aborted (nothing left behind) on any error. `receive_raw` alone serves multi-part upload parts.
Per request: the whole body is capped (413), the form fields together are capped, and a
multipart body must end with its closing boundary (a truncated one is 400 invalid_multipart).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from core.errors import ServiceError
from core.file_checks import FileCheckError
from core.storage import BlobWriter, FileTooLarge
from core.tensor_stream import NonFiniteError

FLUSH_BYTES = 1 << 20  # hand bytes to the writer thread in ~1 MiB pieces
FRAMING_SLACK = 64 * 1024  # multipart boundaries and part headers on top of the file
MAX_FORM_PARTS = 16  # parts of one multipart body (the file, purpose, a few more are ignored)
OpenWriter = Callable[[str], BlobWriter]  # filename -> writer (decides key and format)


@dataclass
class Received:
    filename: str
    writer: BlobWriter
    fields: dict[str, str] = field(default_factory=dict)


class _Parts:
    """python-multipart callbacks: one file part to a writer, small fields to memory."""

    def __init__(self, open_writer: OpenWriter, max_form_bytes: int) -> None:
        self.open_writer = open_writer
        self.max_form_bytes = max_form_bytes
        self.form_bytes = 0
        self.parts = 0
        self.file_done = False
        self.fields: dict[str, str] = {}
        self.writer: BlobWriter | None = None
        self.filename = ""
        self.pending = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._field: bytes = b""
        self._name = ""
        self._value = bytearray()
        self._in_file = False

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_FORM_PARTS:
            raise ServiceError("invalid_multipart", f"more than {MAX_FORM_PARTS} parts in one upload", 400)
        self._headers, self._name, self._value, self._in_file = {}, "", bytearray(), False

    def _count(self, n: int) -> None:
        self.form_bytes += n
        if self.form_bytes > self.max_form_bytes:
            raise ServiceError(
                "request_too_large", f"form fields and part headers exceed {self.max_form_bytes} bytes", 413
            )

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        key = self._field.lower()
        self._headers[key] = self._headers.get(key, b"") + data[start:end]

    def on_header_end(self) -> None:
        self._field = b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        if filename is None:
            return
        if self._name != "file" or self.writer is not None:
            raise ServiceError("invalid_request", "send exactly one file, in the 'file' part", 422)
        self.filename = filename.decode("utf-8", "replace")
        self.writer = self.open_writer(self.filename)
        self._in_file = True

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.pending += data[start:end]
            return
        self._count(end - start)
        self._value += data[start:end]

    def on_part_end(self) -> None:
        if self._in_file:
            self.file_done = True
        elif self._name:
            self.fields[self._name] = self._value.decode("utf-8", "replace")

    def callbacks(self) -> dict[str, Callable[..., None]]:
        names = ("part_begin", "header_field", "header_value", "header_end", "headers_finished")
        cbs = {f"on_{n}": getattr(self, f"on_{n}") for n in names}
        return {**cbs, "on_part_data": self.on_part_data, "on_part_end": self.on_part_end}


async def _flush(writer: BlobWriter, buf: bytearray) -> None:
    if buf:
        data = bytes(buf)
        buf.clear()
        await run_in_threadpool(writer.write, data)


async def _pump(request: Request, parts: _Parts | None, raw: BlobWriter | None, limit: int) -> None:
    parser = MultipartParser(_boundary(request), parts.callbacks()) if parts else None  # type: ignore[arg-type]
    buf = bytearray()
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ServiceError("file_too_large", f"the request body is over {limit} bytes", 413)
        if parser is not None and parts is not None:
            parser.write(chunk)
            if parts.writer is not None and len(parts.pending) >= FLUSH_BYTES:
                await _flush(parts.writer, parts.pending)
        elif raw is not None:
            buf += chunk
            if len(buf) >= FLUSH_BYTES:
                await _flush(raw, buf)
    if parser is not None and parts is not None:
        parser.finalize()
        if parser.state != MultipartState.END or (parts.writer is not None and not parts.file_done):
            raise ServiceError(
                "invalid_multipart", "the multipart body ends before its closing boundary (cut short?)", 400
            )
        if parts.writer is not None:
            await _flush(parts.writer, parts.pending)
    elif raw is not None:
        await _flush(raw, buf)


def _boundary(request: Request) -> bytes:
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise ServiceError("invalid_multipart", "multipart/form-data needs a boundary", 400)
    return boundary


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


def check_length(request: Request, limit: int) -> None:
    """413 before reading anything when a declared Content-Length is over `limit` (+ slack for
    multipart framing); bodies without one are capped mid-stream by the writer."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + FRAMING_SLACK:
        raise ServiceError("file_too_large", f"uploads are limited to {limit} bytes", 413)


def declared_length(request: Request) -> int | None:
    length = request.headers.get("content-length", "")
    return int(length) if length.isdigit() and len(length) < 20 else None


async def _read(request: Request, parts: _Parts | None, raw: BlobWriter | None, limit: int) -> None:
    """Pumps the body (at most `limit` bytes); on any error aborts the writer (nothing left
    behind) and maps the error to a ServiceError."""
    try:
        await _pump(request, parts, raw, limit)
    except BaseException as e:
        writer = raw or (parts.writer if parts else None)
        if writer is not None:
            writer.abort()
        if isinstance(e, FileTooLarge):
            raise ServiceError("file_too_large", str(e), 413) from None
        if isinstance(e, MultipartParseError):
            raise ServiceError("invalid_multipart", f"malformed multipart body ({e})", 400) from None
        if isinstance(e, ClientDisconnect):
            raise ServiceError("upload_interrupted", "the client disconnected mid-upload", 400) from None
        if isinstance(e, NonFiniteError):
            raise ServiceError("non_finite_values", str(e), 400) from None
        if isinstance(e, FileCheckError):
            raise ServiceError(e.code, e.message, 400) from None
        raise


async def receive_raw(request: Request, writer: BlobWriter, limit: int) -> None:
    """Streams the raw body into `writer` (not yet committed; aborted on any error)."""
    await _read(request, None, writer, limit)


async def receive(
    request: Request, open_writer: OpenWriter, filename: str | None, limit: int, max_form_bytes: int
) -> Received:
    """Reads the whole body (at most `limit` file bytes) into a storage writer (not yet
    committed)."""
    if not is_multipart(request):
        if not filename:
            raise ServiceError("invalid_request", "raw uploads need ?filename=<name.ext>", 422)
        raw = open_writer(filename)
        await receive_raw(request, raw, limit)
        return Received(filename, raw)
    parts = _Parts(open_writer, max_form_bytes)
    await _read(request, parts, None, limit + max_form_bytes + FRAMING_SLACK)
    if parts.writer is None:
        raise ServiceError("invalid_request", "the multipart body has no 'file' part", 422)
    return Received(parts.filename, parts.writer, parts.fields)
