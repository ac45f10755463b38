"""Blob storage behind a small interface; `LocalStorage` keeps blobs under a directory.

Every write is atomic: bytes go to a temporary file in the destination directory (sha256 and
size computed on the way, the size cap enforced mid-stream), are fsynced, then renamed into
place. Readers never see a partial blob, and a failed or rejected write leaves nothing behind.
An S3-compatible backend can implement `Storage` (multipart upload + copy for atomicity).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Protocol


class StorageError(Exception):
    """A storage key is invalid or a write was rejected."""


class FileTooLarge(StorageError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the upload is larger than the limit of {limit} bytes")
        self.limit = limit


class BlobWriter(Protocol):
    size: int

    def write(self, chunk: bytes) -> None: ...
    def commit(self) -> tuple[int, str]: ...
    def abort(self) -> None: ...


class Storage(Protocol):
    def writer(self, key: str, max_bytes: int | None = None) -> BlobWriter: ...
    def write_stream(
        self, key: str, chunks: Iterable[bytes], max_bytes: int | None = None
    ) -> tuple[int, str]: ...
    def open(self, key: str) -> BinaryIO: ...
    def path(self, key: str) -> Path: ...
    def size(self, key: str) -> int: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...


class LocalWriter:
    """Streams into a temp file next to the destination; `commit` renames it into place."""

    def __init__(self, dest: Path, max_bytes: int | None) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        self._file = os.fdopen(fd, "wb")
        self._tmp = Path(tmp)
        self._dest = dest
        self._max = max_bytes
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        if self._max is not None and self.size + len(chunk) > self._max:
            self.abort()
            raise FileTooLarge(self._max)
        self._file.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    def commit(self) -> tuple[int, str]:
        """fsync, rename into place, fsync the directory; returns (size, sha256 hex)."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self._dest)
        dir_fd = os.open(self._dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return self.size, self._hash.hexdigest()

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)


class LocalStorage:
    """Blobs as files under `root`; keys are relative POSIX paths like "files/t/file-ab.bin"."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """The local path of `key` (the worker reads and writes artifacts there)."""
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise StorageError(f"invalid storage key {key!r}")
        return self.root.joinpath(*parts)

    def key_for(self, path: Path | str) -> str:
        """The key of a local path under the root (inverse of `path`)."""
        rel = Path(path).resolve().relative_to(self.root)
        return rel.as_posix()

    def writer(self, key: str, max_bytes: int | None = None) -> LocalWriter:
        return LocalWriter(self.path(key), max_bytes)

    def write_stream(
        self, key: str, chunks: Iterable[bytes], max_bytes: int | None = None
    ) -> tuple[int, str]:
        """Write `chunks` atomically to `key`; returns (size, sha256 hex)."""
        w = self.writer(key, max_bytes)
        try:
            for chunk in chunks:
                w.write(chunk)
            return w.commit()
        except BaseException:
            w.abort()
            raise

    def open(self, key: str) -> BinaryIO:
        return self.path(key).open("rb")

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        """Remove `key`, a blob or a whole prefix directory; no error if absent.

        Parent directories are kept: a concurrent writer may be creating a file in them."""
        p = self.path(key)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def get_storage(root: Path | str | None = None) -> LocalStorage:
    from core.settings import get_settings

    return LocalStorage(root if root is not None else get_settings().storage_dir)
