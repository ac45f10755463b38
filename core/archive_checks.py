"""Archive checks (torch-free): .zip / .tar / .npz listings with caps, and image members decoded.

Refused before anything is stored for good: more than `max_members` entries, more than
`max_archive_bytes` uncompressed in all, a member compressed more than `max_compression_ratio`
to 1 (a bomb), encrypted members, links and devices, absolute or `..` names, a tar without its
end-of-archive block (cut short), and image members the worker could not decode (not an image
format Pillow decodes, over the pixel cap, truncated). Which members count as images is the
worker's rule (calm.image_sets): every Pillow format by suffix; hidden files, `__MACOSX/` and
other files are skipped, and their names kept for the person to see.
"""

from __future__ import annotations

import io
import stat
import tarfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from calm.image_sets import IMAGE_FORMATS, is_image

RATIO_FLOOR = 1 << 20  # the ratio cap applies to members larger than this uncompressed
BLOCK = 512


class FileCheckError(ValueError):
    """The file cannot be used; `code` is stable, `message` says what to fix."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Limits:
    """Upload caps; keep them at or below the worker's (calm.data.DataLimits)."""

    max_header_bytes: int = 16 * 1024 * 1024
    max_members: int = 200_000
    max_archive_bytes: int = 4 << 30
    max_compression_ratio: float = 100.0
    max_images: int = 20_000
    max_image_bytes: int = 64 << 20
    max_image_pixels: int = 25_000_000
    max_tensors: int = 100_000
    max_csv_bytes: int = 16 << 20


def safe_member(name: str) -> str:
    p = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise FileCheckError("unsafe_archive", f"archive member {name!r} escapes the archive")
    return p.as_posix()


def _too_big(total: int, limits: Limits) -> FileCheckError:
    return FileCheckError(
        "archive_too_large", f"the archive expands to more than {limits.max_archive_bytes} bytes ({total})"
    )


def zip_members(z: zipfile.ZipFile, limits: Limits) -> list[zipfile.ZipInfo]:
    """The regular members of an open zip, after the caps and safety checks."""
    infos = z.infolist()
    if len(infos) > limits.max_members:
        raise FileCheckError("too_many_members", f"more than {limits.max_members} archive members")
    total, out = 0, []
    for info in infos:
        safe_member(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise FileCheckError("unsafe_archive", f"archive member {info.filename!r} is a symbolic link")
        if info.flag_bits & 0x1:
            raise FileCheckError("invalid_archive", f"archive member {info.filename!r} is encrypted")
        total += info.file_size
        if total > limits.max_archive_bytes:
            raise _too_big(total, limits)
        if info.file_size > RATIO_FLOOR and info.file_size > limits.max_compression_ratio * max(
            info.compress_size, 1
        ):
            raise FileCheckError(
                "archive_bomb",
                f"archive member {info.filename!r} is compressed more than "
                f"{limits.max_compression_ratio:g}:1 ({info.compress_size} -> {info.file_size} bytes)",
            )
        if not info.is_dir():
            out.append(info)
    return out


def tar_members(t: tarfile.TarFile, path: Path, limits: Limits) -> list[tarfile.TarInfo]:
    """The regular members of an open uncompressed tar; refuses links, devices, sparse files,
    and a tar that ends without its end-of-archive block (cut short)."""
    total, out, count = 0, [], 0
    size = path.stat().st_size
    for m in _members(t):
        count += 1
        if count > limits.max_members:
            raise FileCheckError("too_many_members", f"more than {limits.max_members} archive members")
        safe_member(m.name)
        if m.isdir():
            continue
        if not m.isfile() or m.issparse():
            what = f"archive member {m.name!r} is a link, device or sparse file"
            raise FileCheckError("unsafe_archive", what)
        total += m.size
        if total > limits.max_archive_bytes:
            raise _too_big(total, limits)
        if m.offset_data + m.size > size:
            raise _cut_short()
        out.append(m)
    with path.open("rb") as f:
        f.seek(t.offset)
        if f.read(BLOCK) != bytes(BLOCK):
            raise _cut_short()
    return out


def _cut_short() -> FileCheckError:
    return FileCheckError("truncated_archive", "the tar archive is cut short; upload it again")


def _members(t: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The members, in order; a header or data cut off by the end of the file is truncated_archive."""
    try:
        yield from t
    except tarfile.ReadError as e:
        if "unexpected end" in str(e):
            raise _cut_short() from None
        raise


def check_image(name: str, data: bytes, limits: Limits) -> None:
    """Decodes one image the way the worker will (PIL): a format it decodes, within the pixel
    cap, whole."""
    from PIL import Image

    too_large = FileCheckError("image_too_large", f"{name} has more than {limits.max_image_pixels} pixels")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning: we cap below
            with Image.open(io.BytesIO(data)) as img:
                if img.format not in IMAGE_FORMATS:
                    raise FileCheckError("invalid_image", f"{name} is {img.format}, which cannot be decoded")
                w, h = img.size
                if w * h > limits.max_image_pixels:
                    raise FileCheckError(
                        "image_too_large", f"{name} is {w}x{h} pixels (at most {limits.max_image_pixels})"
                    )
                img.load()
    except FileCheckError:
        raise
    except Image.DecompressionBombError:
        raise too_large from None
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError
        raise FileCheckError("invalid_image", f"cannot decode image {name} ({str(e)[:200]})") from None


ImageReader = tuple[str, int, Callable[[], bytes]]  # (name, declared size, read)


@contextmanager
def archive_images(path: Path, fmt: str, limits: Limits) -> Iterator[list[ImageReader]]:
    """The image members of a .zip/.tar (after every archive check), as readers."""
    try:
        if fmt == "zip":
            with zipfile.ZipFile(path) as z:
                members = zip_members(z, limits)
                yield [(i.filename, i.file_size, lambda i=i: z.read(i)) for i in members]
        else:
            with tarfile.open(path, "r:") as t:
                members = tar_members(t, path, limits)
                yield [(m.name, m.size, lambda m=m: _tar_read(t, m)) for m in members]
    except FileCheckError:
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, RuntimeError, ValueError) as e:
        raise FileCheckError("invalid_archive", f"not a readable {fmt} archive ({str(e)[:200]})") from None


def _tar_read(t: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    f = t.extractfile(m)
    data = f.read() if f is not None else b""
    if len(data) != m.size:
        raise FileCheckError("truncated_archive", f"archive member {m.name!r} is cut short")
    return data


def check_images(path: Path, fmt: str, limits: Limits) -> tuple[list[str], list[str]]:
    """Names of the archive's images, each decoded once (refuses what the worker would), and
    of the files skipped (not images, hidden)."""
    names: list[str] = []
    with archive_images(path, fmt, limits) as members:
        listed = [(safe_member(raw), size, read) for raw, size, read in members]
        images = [(n, size, read) for n, size, read in listed if is_image(n)]
        skipped = sorted(n for n, _, _ in listed if not is_image(n))
        if len(images) > limits.max_images:
            raise FileCheckError("too_many_images", f"{len(images)} images (at most {limits.max_images})")
        for name, size, read in images:
            if size > limits.max_image_bytes:
                raise FileCheckError(
                    "image_too_large", f"{name} is {size} bytes (at most {limits.max_image_bytes})"
                )
            check_image(name, read(), limits)
            names.append(name)
    return names, skipped
