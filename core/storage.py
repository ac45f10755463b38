"""Blob storage behind one interface, `Storage`, with two backends chosen by
settings.storage_backend: `LocalStorage` (blobs as files under a directory, the default) and
`core.s3_storage.S3Storage` (an S3-compatible bucket through boto3).

Every write is atomic: bytes are streamed (sha256 and size computed on the way, the size cap
enforced mid-stream) to a temporary file that is renamed into place (local), or to a multipart
upload that only becomes an object when completed (S3). Readers never see a partial blob, and
a failed or rejected write leaves nothing behind.

`path(key)` gives a local file holding a blob's bytes, for code that needs a real file (upload
checks, the merge library): the file itself locally, a cached download on S3. Everything that
serves or streams bytes uses `open` / `read_range` instead.
"""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

if TYPE_CHECKING:
    from core.settings import Settings

READ_BYTES = 1 << 20


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


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    modified: float  # unix time of the last write


class Storage(Protocol):
    def writer(self, key: str, max_bytes: int | None = None) -> BlobWriter: ...
    def write_stream(
        self, key: str, chunks: Iterable[bytes], max_bytes: int | None = None
    ) -> tuple[int, str]: ...
    def put_file(self, key: str, path: Path) -> tuple[int, str]: ...
    def staging_dir(self) -> Path: ...
    def open(self, key: str) -> BinaryIO: ...
    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]: ...
    def local_file(self, key: str) -> Path | None: ...
    def path(self, key: str) -> Path: ...
    def size(self, key: str) -> int: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> list[BlobInfo]: ...


def check_key(key: str) -> list[str]:
    """The parts of a safe relative key ("files/t/file-ab.bin"); StorageError otherwise."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"invalid storage key {key!r}")
    return parts


class LocalWriter:
    """Streams into a temp file next to the destination; `commit` renames it into place.

    Hashing and writing run on a helper thread fed through a small bounded queue (both release
    the GIL), so a caller receiving bytes from the network overlaps with them; memory stays
    at QUEUE_CHUNKS chunks."""

    QUEUE_CHUNKS = 4

    def __init__(self, dest: Path, max_bytes: int | None) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        self._file = os.fdopen(fd, "wb")
        self._tmp = Path(tmp)
        self._dest = dest
        self._max = max_bytes
        self._hash = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(self.QUEUE_CHUNKS)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="blob-writer", daemon=True)
        self._thread.start()
        self.size = 0

    def _drain(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._file.write(chunk)
                    self._hash.update(chunk)
                except BaseException as e:  # reported by the next write or commit
                    self._error = e

    def _finish_thread(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def write(self, chunk: bytes) -> None:
        if self._error is not None:
            self.abort()
            raise self._error
        if self._max is not None and self.size + len(chunk) > self._max:
            self.abort()
            raise FileTooLarge(self._max)
        self._queue.put(bytes(chunk))
        self.size += len(chunk)

    def commit(self) -> tuple[int, str]:
        """fsync, rename into place, fsync the directory; returns (size, sha256 hex)."""
        self._finish_thread()
        if self._error is not None:
            self.abort()
            raise self._error
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
        self._finish_thread()
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)


class LocalStorage:
    """Blobs as files under `root`; keys are relative POSIX paths like "files/t/file-ab.bin"."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """The local path of `key`."""
        return self.root.joinpath(*check_key(key))

    def local_file(self, key: str) -> Path | None:
        """The file to serve directly (sendfile, multi-range): the blob's own path."""
        return self.path(key)

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

    def put_file(self, key: str, path: Path) -> tuple[int, str]:
        """Moves the local file `path` to `key` (a rename when it is on the same filesystem,
        e.g. under `staging_dir()`); returns (size, sha256 hex)."""
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, dest)
        except OSError:  # another filesystem: copy atomically
            with open(path, "rb") as f:
                return self.write_stream(key, iter(lambda: f.read(READ_BYTES), b""))
        return dest.stat().st_size, digest

    def staging_dir(self) -> Path:
        """Scratch space on the storage's filesystem, so `put_file` from it is a rename."""
        d = self.root / ".staging"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def open(self, key: str) -> BinaryIO:
        return self.path(key).open("rb")

    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes start..end (inclusive) of the blob, in chunks."""
        with self.open(key) as f:
            f.seek(start)
            left = end - start + 1
            while left > 0 and (chunk := f.read(min(READ_BYTES, left))):
                left -= len(chunk)
                yield chunk

    def list(self, prefix: str) -> list[BlobInfo]:
        """Every blob under the folder `prefix` (temporary files included)."""
        root = self.path(prefix)
        out = []
        for p in root.rglob("*") if root.is_dir() else []:
            try:
                if p.is_file() and not p.is_symlink():
                    st = p.stat()
                    out.append(BlobInfo(p.relative_to(self.root).as_posix(), st.st_size, st.st_mtime))
            except OSError:  # renamed or deleted meanwhile
                continue
        return out

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


def storage_from(settings: Settings) -> Storage:
    """The backend that `settings` names (storage_backend "local" or "s3")."""
    if settings.storage_backend == "s3":
        from core.s3_storage import S3Storage

        return S3Storage.from_settings(settings)
    return LocalStorage(settings.storage_dir)


def get_storage(root: Path | str | None = None) -> Storage:
    """The process settings' storage (or a LocalStorage at `root`)."""
    from core.settings import get_settings

    return LocalStorage(root) if root is not None else storage_from(get_settings())
