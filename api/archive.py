"""A zip of a job's result folder, streamed while it is written (no temporary file, memory flat
in the folder's size): safetensors stored as they are, text files deflated."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import PurePosixPath
from typing import BinaryIO

CHUNK = 1 << 20
STORED_SUFFIXES = frozenset({".safetensors"})  # float tensors barely deflate; storing is fast


class _Sink(io.RawIOBase):
    """A write-only, unseekable file that hands its bytes on (zipfile then writes data
    descriptors instead of seeking back)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._pos = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        data = bytes(b)
        self._chunks.append(data)
        self._pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self._pos

    def drain(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


def zip_stream(files: Iterable[tuple[str, int, Callable[[], BinaryIO]]]) -> Iterator[bytes]:
    """Yields a zip archive of `files` ((name in the archive, size, opener)) chunk by chunk;
    the openers read from any storage backend."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", allowZip64=True) as zf:
        for arcname, size, opener in files:
            info = zipfile.ZipInfo(arcname, date_time=time.localtime()[:6])
            info.file_size = size  # zip64 when needed
            info.external_attr = 0o644 << 16
            stored = PurePosixPath(arcname).suffix in STORED_SUFFIXES
            info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            with opener() as src, zf.open(info, "w") as dst:
                while block := src.read(CHUNK):
                    dst.write(block)
                    if data := sink.drain():
                        yield data
            if data := sink.drain():
                yield data
    if data := sink.drain():
        yield data
