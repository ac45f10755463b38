"""Finiteness of a safetensors file's float tensors, checked on the bytes as they stream in.

`FiniteScanner.feed` takes the upload's chunks in order: it parses the header once the first
8 + n bytes have arrived, then tests every float element as its bytes pass (an element split
across chunks is carried over). A value is NaN or Inf exactly when all its exponent bits are
set, so the test is one vectorised AND per chunk on the raw integers (numpy; no torch, no float
conversion, bfloat16 included). A malformed header just stops the scan: the full validation
after the upload reports it. `CheckedWriter` wraps a storage writer with a scanner, so a NaN
is refused mid-upload and nothing is kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from core.storage import BlobWriter
from core.tensor_headers import HeaderError, header_length, parse_safetensors_header

# dtype -> (unsigned integer view, exponent mask: all bits set <=> NaN or Inf)
EXPONENT_MASKS: dict[str, tuple[type[np.unsignedinteger], int]] = {
    "F16": (np.uint16, 0x7C00),
    "BF16": (np.uint16, 0x7F80),
    "F32": (np.uint32, 0x7F800000),
    "F64": (np.uint64, 0x7FF0000000000000),
    "F8_E5M2": (np.uint8, 0x7C),
    "F8_E4M3": (np.uint8, 0x7F),  # e4m3fn: no Inf, NaN = S.1111.111
}
READ_BYTES = 1 << 20


class NonFiniteError(ValueError):
    """A float tensor holds NaN or Inf."""

    def __init__(self, tensor: str) -> None:
        super().__init__(f"tensor {tensor!r} holds NaN or Inf values; every value must be finite")
        self.tensor = tensor


def nonfinite_count(data: bytes | memoryview, dtype: str) -> int:
    """How many NaN/Inf elements the little-endian `data` of `dtype` holds."""
    view, mask = EXPONENT_MASKS[dtype]
    values = np.frombuffer(data, dtype=np.dtype(view).newbyteorder("<"))
    return int(np.count_nonzero((values & view(mask)) == view(mask)))


class FiniteScanner:
    """Feeds on a safetensors byte stream; raises NonFiniteError at the first NaN/Inf."""

    def __init__(self, max_header_bytes: int) -> None:
        self.max_header_bytes = max_header_bytes
        self._head = bytearray()
        self._spans: list[tuple[int, int, str, str]] | None = None  # (begin, end, name, dtype)
        self._index = 0
        self._pos = 0  # bytes of the data section seen
        self._carry = b""  # the start of an element split across chunks
        self.active = True

    def feed(self, chunk: bytes) -> None:
        if not self.active or not chunk:
            return
        if self._spans is None:
            chunk = self._take_header(chunk)
            if self._spans is None:
                return
        self._scan(self._carry + chunk)

    def _take_header(self, chunk: bytes) -> bytes:
        self._head += chunk
        try:
            n = header_length(bytes(self._head[:8]), self.max_header_bytes)
        except HeaderError:
            self.active = len(self._head) < 8
            return b""
        if len(self._head) < 8 + n:
            return b""
        try:
            tensors = parse_safetensors_header(bytes(self._head[8 : 8 + n]), None)["tensors"]
        except HeaderError:
            self.active = False
            return b""
        self._spans = sorted((t["begin"], t["end"], k, t["dtype"]) for k, t in tensors.items())
        rest = bytes(self._head[8 + n :])
        self._head = bytearray()
        return rest

    def _scan(self, data: bytes) -> None:
        assert self._spans is not None
        view, start = memoryview(data), 0
        self._carry = b""
        while start < len(view) and self._index < len(self._spans):
            begin, end, name, dtype = self._spans[self._index]
            take = min(len(view) - start, end - self._pos)
            piece = view[start : start + take]
            if dtype in EXPONENT_MASKS:
                item = np.dtype(EXPONENT_MASKS[dtype][0]).itemsize
                usable = take - take % item
                if nonfinite_count(piece[:usable], dtype):
                    raise NonFiniteError(name)
                if usable < take:  # the chunk ends inside an element
                    self._carry = bytes(piece[usable:])
                    self._pos += usable
                    return
            self._pos += take
            start += take
            if self._pos >= end:
                self._index += 1


def scan_file(path: Path, max_header_bytes: int) -> None:
    """The same check over a stored file (for files that did not stream through a scanner)."""
    scanner = FiniteScanner(max_header_bytes)
    with path.open("rb") as f:
        while scanner.active and (chunk := f.read(READ_BYTES)):
            scanner.feed(chunk)


def scanned(chunks: Iterable[bytes], scanner: FiniteScanner) -> Iterator[bytes]:
    """`chunks`, each fed to `scanner` before it is passed on."""
    for chunk in chunks:
        scanner.feed(chunk)
        yield chunk


class CheckedWriter:
    """A BlobWriter that feeds every chunk to a FiniteScanner before storing it."""

    def __init__(self, inner: BlobWriter, scanner: FiniteScanner) -> None:
        self.inner = inner
        self.scanner = scanner

    @property
    def size(self) -> int:
        return self.inner.size

    def write(self, chunk: bytes) -> None:
        try:
            self.scanner.feed(chunk)
        except NonFiniteError:
            self.inner.abort()
            raise
        self.inner.write(chunk)

    def commit(self) -> tuple[int, str]:
        return self.inner.commit()

    def abort(self) -> None:
        self.inner.abort()
