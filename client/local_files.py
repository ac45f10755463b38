"""The local files of a spec, on their way to the service: each referenced once, a directory of
images zipped (the same bytes every time, so a rerun finds it uploaded), and a file the
service already holds (same sha256 and purpose) reused instead of uploaded again."""

from __future__ import annotations

import hashlib
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Upload = Callable[[Path, str], str]  # (path, purpose) -> file id
Find = Callable[[str, str], str | None]  # (sha256, purpose) -> an uploaded file's id, or None
Say = Callable[[str], None]
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the zip of a folder has stable bytes
DIRECTORY_PURPOSES = ("dataset", "eval")  # image folders are zipped; other refs must be files
CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def folder_files(folder: Path) -> list[Path]:
    """Regular files under `folder`, sorted, hidden ones (.DS_Store, .git/...) left out."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def zip_folder(folder: Path, out: Path) -> Path:
    """`folder` as a zip of its files (stored, fixed timestamps and modes): identical bytes for
    identical contents."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as z:
        for p in folder_files(folder):
            info = zipfile.ZipInfo(p.relative_to(folder).as_posix(), date_time=ZIP_TIME)
            info.external_attr = 0o644 << 16
            with p.open("rb") as src, z.open(info, "w") as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
    return out


def is_file_id(text: str) -> bool:
    """A reference that is no local path but an id the service returned (`file-...`)."""
    return text.startswith("file-") and "/" not in text


class Resolver:
    """Maps each file reference of a spec to a file id: a file id is kept, a local file is
    found on the service by sha256 (`find`) or uploaded (`upload`), a local folder of images is
    zipped first. Each (path, purpose) is resolved once."""

    def __init__(self, base_dir: Path, upload: Upload, find: Find | None = None,
                 say: Say | None = None) -> None:  # fmt: skip
        self.base_dir, self.upload, self.find = Path(base_dir), upload, find
        self.say = say or (lambda _: None)
        self.done: dict[tuple[Path, str], str] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def local_path(self, ref: Any) -> Path | None:
        """The local path `ref` names, or None when it is a file id."""
        p = Path(str(ref)).expanduser()
        p = p if p.is_absolute() else self.base_dir / p
        return None if not p.exists() and is_file_id(str(ref)) else p

    def problems(self, refs: Iterator[Any]) -> list[str]:
        """What cannot be sent, before anything is: missing files, folders where files belong."""
        out = []
        for loc, ref, purpose in refs:
            p = self.local_path(ref)
            if p is None:
                continue
            if not p.exists():
                out.append(f"{loc}: {p}: no such file (and not a file id)")
            elif p.is_dir() and (purpose not in DIRECTORY_PURPOSES or loc.endswith(".eval_labels")):
                what = "eval_labels must be a CSV file" if loc.endswith(".eval_labels") else \
                    f"a {purpose} must be a file"
                out.append(f"{loc}: {p} is a folder; {what}")
            elif p.is_dir() and not folder_files(p):
                out.append(f"{loc}: the folder {p} is empty")
        return out

    def __call__(self, ref: Any) -> str:
        loc, value, purpose = ref
        p = self.local_path(value)
        if p is None:
            return str(value)
        key = (p.resolve(), purpose)
        if key not in self.done:
            self.done[key] = self._send(p, purpose, loc)
        return self.done[key]

    def _send(self, p: Path, purpose: str, loc: str) -> str:
        if p.is_dir():
            zipped = zip_folder(p, self._tmp_dir() / f"{p.name or 'data'}.zip")
            self.say(f"{loc}: zipped the folder {p} ({len(folder_files(p))} files)")
            p = zipped
        if self.find is not None:
            found = self.find(sha256_of(p), purpose)
            if found is not None:
                self.say(f"{loc}: {p.name} is already uploaded as {found} (same sha256); reusing it")
                return found
        return self.upload(p, purpose)

    def _tmp_dir(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="calm-client-")
        return Path(self._tmp.name)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
