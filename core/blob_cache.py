"""A local, size-capped cache of remote blobs (files under a directory, named by their keys).

The S3 backend keeps here the bytes it had to give a local path for: a worker's inputs (a base
checkpoint shared by many jobs is downloaded once per machine) and, on the API, the copy of an
upload that the upload checks read. Entries are written to a temporary file and renamed into
place, so several processes may share one cache directory. Storage keys are never rewritten
with other bytes (new files and results get new keys), so an entry whose size matches the
object is the object.

`trim` removes the least recently used entries until the cache is under its cap, skipping
entries used in the last `min_age_s` (a merge may be reading them).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import IO

from core.storage import check_key

DEFAULT_MIN_AGE_S = 600.0


class BlobCache:
    def __init__(self, root: Path | str, max_bytes: int, min_age_s: float = DEFAULT_MIN_AGE_S) -> None:
        self.root = Path(root).resolve()
        self.max_bytes = max_bytes
        self.min_age_s = min_age_s

    def path(self, key: str) -> Path:
        return self.root.joinpath("blobs", *check_key(key))

    def get(self, key: str, size: int) -> Path | None:
        """The cached copy of `key` if it holds `size` bytes (its use time refreshed)."""
        p = self.path(key)
        try:
            if p.stat().st_size != size:
                return None
            os.utime(p)
        except FileNotFoundError:
            return None
        return p

    def temp_file(self, key: str) -> tuple[IO[bytes], Path]:
        """An open temporary file next to `key`'s entry; `commit` moves it into place."""
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        return os.fdopen(fd, "wb"), Path(tmp)

    def commit(self, key: str, tmp: Path) -> Path:
        dest = self.path(key)
        os.replace(tmp, dest)
        self.trim()
        return dest

    def discard(self, key: str) -> None:
        p = self.path(key)
        if not p.is_dir():
            p.unlink(missing_ok=True)

    def discard_prefix(self, prefix: str) -> None:
        root = self.path(prefix)
        for p in sorted(root.rglob("*"), reverse=True) if root.is_dir() else []:
            if p.is_file():
                p.unlink(missing_ok=True)

    def trim(self) -> int:
        """Deletes least recently used entries until the total is under the cap; returns how
        many bytes it freed."""
        entries = []
        for p in (self.root / "blobs").rglob("*") if (self.root / "blobs").is_dir() else []:
            try:
                st = p.stat()
            except OSError:
                continue
            if p.is_file():
                entries.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        freed, now = 0, time.time()
        for mtime, size, p in sorted(entries):
            if total - freed <= self.max_bytes:
                break
            if now - mtime < self.min_age_s:
                continue
            p.unlink(missing_ok=True)
            freed += size
        return freed
