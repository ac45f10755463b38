"""Task inputs: images from a directory / .zip / .tar(.gz), or preprocessed tensor files.

Archives are read in memory (never extracted), members sorted by name for determinism. Decoded
images stay on the host as uint8 pixels (calm.images); a set above `max_images` is an error,
never silently truncated.
Labelled image sets keep one sub-folder per class index (`0/`, `1/`, ...).
"""

from __future__ import annotations

import io
import json
import mmap
import os
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

from calm.checkpoints import sniff_format
from calm.errors import DataError
from calm.images import HostImages, split_preprocess, to_uint8

Preprocess = Callable[[Any], torch.Tensor]  # PIL image -> [3, H, W]
Kind = Literal["dir", "zip", "tar", "safetensors", "npz"]
Entry = tuple[str, Callable[[], bytes]]  # (member name, reader)
IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg"})


@dataclass(frozen=True)
class DataLimits:
    max_images: int = 20_000
    max_pixels: int = 25_000_000  # per decoded image: refuses decompression bombs
    max_member_bytes: int = 64 << 20  # per image file
    max_total_bytes: int = 4 << 30  # all images of an archive / a tensor file's contents
    max_members: int = 200_000  # image entries listed in an archive


@dataclass(frozen=True)
class DataInfo:
    kind: Kind
    count: int
    num_classes: int | None = None  # labelled sets only: max label + 1


DEFAULT_LIMITS = DataLimits()


def data_kind(path: Path) -> Kind:
    """What `path` holds, by content (uploaded files may lack extensions)."""
    if path.is_dir():
        return "dir"
    if not path.is_file():
        raise DataError(f"{path.name}: no such file or directory")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        return "npz" if names and all(n.endswith(".npy") for n in names) else "zip"
    if sniff_format(path) == "safetensors":
        return "safetensors"
    if tarfile.is_tarfile(path):
        return "tar"
    raise DataError(f"{path.name}: unsupported data file; expected a directory, .zip or "
                    ".tar(.gz) of PNG/JPEG images, or .safetensors/.npz with key 'images'")


def _member_name(name: str, src: str) -> str | None:
    """Normalised member name; None for non-images; DataError for path traversal."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise DataError(f"{src}: unsafe member name {name!r} (absolute or '..')")
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None  # hidden files, macOS resource forks
    return "/".join(p for p in parts if p != ".") if Path(name).suffix.lower() in IMAGE_EXTS else None


def _list_images(path: Path, kind: Kind, lim: DataLimits, tf: Any = None) -> list[Entry]:
    """(name, reader) of every image in a directory (no symlinks), zip or tar, unsorted."""
    out: list[Entry] = []
    total = 0
    if kind == "dir":
        items = ((Path(d, f).relative_to(path).as_posix(), Path(d, f))
                 for d, _, fs in os.walk(path) for f in fs)  # does not follow symlinks
        items = ((n, p.stat().st_size, p.read_bytes) for n, p in items if not p.is_symlink())
    elif kind == "zip":
        items = ((i.filename, i.file_size, lambda i=i: tf.read(i))  # capped at declared size
                 for i in tf.infolist() if not i.is_dir())
    else:  # tar: one streaming pass (data read below); links, devices, folders skipped
        items = ((m.name, m.size, lambda m=m: tf.extractfile(m).read()) for m in tf if m.isreg())
    for raw, size, read in items:
        name = _member_name(raw, path.name)
        if name is None:
            continue
        total += size
        if size > lim.max_member_bytes or total > lim.max_total_bytes or len(out) >= lim.max_members:
            raise DataError(f"{path.name}: too much image data at {name} (limits: "
                            f"{lim.max_member_bytes} bytes per file, {lim.max_total_bytes} in all, "
                            f"{lim.max_members} files)")
        if kind == "tar":
            read = (lambda d: lambda: d)(read())
        out.append((name, read))
    return out


@contextmanager
def _image_entries(path: Path, kind: Kind, lim: DataLimits) -> Iterator[list[Entry]]:
    """Image members of a directory or archive, sorted by name."""
    try:
        with ExitStack() as stack:
            archive: Any = None
            if kind == "zip":
                archive = stack.enter_context(zipfile.ZipFile(path))
            elif kind == "tar":
                archive = stack.enter_context(tarfile.open(path, "r:*"))
            yield sorted(_list_images(path, kind, lim, archive), key=lambda e: e[0])
    except (zipfile.BadZipFile, tarfile.TarError, OSError, RuntimeError, EOFError) as e:
        raise DataError(f"{path.name}: unreadable ({e})") from None


def expected_shape(preprocess: Preprocess) -> tuple[int, ...]:
    """(3, H, W) that `preprocess` produces."""
    return tuple(preprocess(Image.new("RGB", (64, 64))).shape)


def _decode(name: str, data: bytes, preprocess: Preprocess, lim: DataLimits, src: str) -> torch.Tensor:
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in ("PNG", "JPEG"):
                raise DataError(f"{src}: {name} is {img.format}, not PNG/JPEG")
            if img.size[0] * img.size[1] > lim.max_pixels:
                raise DataError(f"{src}: {name} is {img.size} pixels (limit {lim.max_pixels})")
            return preprocess(img.convert("RGB"))  # [3, H, W]
    except DataError:
        raise
    except Exception as e:  # PIL raises OSError, ValueError, DecompressionBombError, ...
        raise DataError(f"{src}: cannot decode image {name} ({e})") from None


def _label(name: str, src: str) -> int:
    folder = PurePosixPath(name).parent.name
    if not folder.isdigit():
        raise DataError(f"{src}: {name} is not in a class-index folder such as '0/' or '1/'")
    return int(folder)


def _mmap_safetensors(path: Path, key: str) -> torch.Tensor:
    """One tensor of a safetensors file, memory-mapped copy-on-write (read lazily, on demand)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))  # already validated by safe_open
        entry = header[key]
        begin, end = entry["data_offsets"]
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
    count = (end - begin) // dtype.itemsize
    flat = torch.frombuffer(buf, dtype=dtype, count=count, offset=8 + n + begin)
    return flat.view(entry["shape"])


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                       "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                       "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8}


def _tensor_file(path: Path, kind: Kind, keys: tuple[str, ...]) -> list[torch.Tensor]:
    """The arrays `keys` of a tensor file: safetensors memory-mapped, npz read in full."""
    try:
        if kind == "safetensors":
            with safe_open(str(path), framework="pt") as f:
                missing = [k for k in keys if k not in f.keys()]  # noqa: SIM118
            if not missing:
                return [_mmap_safetensors(path, k) for k in keys]
        else:
            with np.load(path, allow_pickle=False) as npz:
                missing = [k for k in keys if k not in npz.files]
                if not missing:
                    return [torch.from_numpy(np.ascontiguousarray(npz[k])) for k in keys]
    except DataError:
        raise
    except Exception as e:  # safetensors / numpy / zip errors, object arrays, bad dtypes
        raise DataError(f"{path.name}: unreadable tensor file ({e})") from None
    raise DataError(f"{path.name}: missing key(s) {missing}; expected {list(keys)}")


def _tensor_header(path: Path, kind: Kind, key: str) -> tuple[tuple[int, ...], str]:
    """(shape, numpy dtype kind) of one stored array, without reading its data."""
    try:
        if kind == "safetensors":
            with safe_open(str(path), framework="pt") as f:
                sl = f.get_slice(key)
                return tuple(sl.get_shape()), "f" if sl.get_dtype()[0] in "FB" else "i"
        with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as fp:
            fmt = np.lib.format
            v1 = fmt.read_magic(fp) == (1, 0)
            shape, _, dtype = (fmt.read_array_header_1_0 if v1 else fmt.read_array_header_2_0)(fp)
            return tuple(shape), dtype.kind
    except Exception as e:
        raise DataError(f"{path.name}: no readable array {key!r} ({e})") from None


def _check_size(path: Path, kind: Kind, lim: DataLimits) -> None:
    if kind == "npz":
        with zipfile.ZipFile(path) as zf:
            size = sum(i.file_size for i in zf.infolist())  # uncompressed: zip bombs
    else:
        size = path.stat().st_size
    if size > lim.max_total_bytes:
        raise DataError(f"{path.name}: {size} bytes of tensors (limit {lim.max_total_bytes})")


def _check_images_meta(shape: tuple[int, ...], kind: str, want: tuple[int, ...], src: str) -> None:
    if len(shape) != 4 or tuple(shape[1:]) != want or shape[0] == 0:
        raise DataError(f"{src}: 'images' must be [N>0, {', '.join(map(str, want))}], "
                        f"got {list(shape)}")
    if kind != "f":
        raise DataError(f"{src}: 'images' must be float (already preprocessed)")


def _check_images(x: torch.Tensor, want: tuple[int, ...], src: str, lim: DataLimits) -> HostImages:
    _check_images_meta(tuple(x.shape), "f" if x.is_floating_point() else "i", want, src)
    _check_count(x.shape[0], src, lim)
    for i in range(0, x.shape[0], 1024):  # streamed: a memory-mapped file is paged in once
        if not torch.isfinite(x[i : i + 1024]).all():
            raise DataError(f"{src}: 'images' has NaN or Inf values")
    return HostImages(x)


def _check_count(n: int, src: str, lim: DataLimits) -> None:
    if n > lim.max_images:
        raise DataError(f"{src}: {n} images, more than the limit of {lim.max_images} per data "
                        f"set (the `max_images` run option; CALM_MAX_IMAGES for the service). "
                        f"Nothing was truncated: send fewer images or raise the limit.")


def _check_labels(y: torch.Tensor, n: int, src: str) -> torch.Tensor:
    integer = not y.is_floating_point() and not y.is_complex() and y.dtype != torch.bool
    if y.ndim != 1 or y.shape[0] != n or not integer or (y.numel() and int(y.min()) < 0):
        raise DataError(f"{src}: 'labels' must be [N={n}] non-negative integers, got "
                        f"{list(y.shape)} {y.dtype}")
    return y.to(torch.int64)


def _decode_all(entries: list[Entry], preprocess: Preprocess, lim: DataLimits,
                src: str) -> HostImages:
    """Decode every image; uint8 pixels when the preprocess ends in ToTensor + Normalize."""
    pixels = split_preprocess(preprocess)
    if pixels is None:
        return HostImages(torch.stack([_decode(n, r(), preprocess, lim, src) for n, r in entries]))
    out = None
    for i, (name, read) in enumerate(entries):
        x = to_uint8(_decode(name, read(), pixels.to_pixels, lim, src))  # [3, H, W]
        if out is None:
            out = torch.empty((len(entries), *x.shape), dtype=torch.uint8)
        out[i] = x
    assert out is not None
    return HostImages(out, pixels.mean, pixels.std)


def _load(path: Path, preprocess: Preprocess, labelled: bool,
          lim: DataLimits) -> tuple[HostImages, torch.Tensor | None]:
    path, src = Path(path), Path(path).name
    kind = data_kind(path)
    if kind in ("safetensors", "npz"):
        _check_size(path, kind, lim)
        arrays = _tensor_file(path, kind, ("images", "labels") if labelled else ("images",))
        images = _check_images(arrays[0], expected_shape(preprocess), src, lim)
        return images, _check_labels(arrays[1], len(images), src) if labelled else None
    with _image_entries(path, kind, lim) as entries:
        if not entries:
            raise DataError(f"{src}: no PNG/JPEG images found")
        _check_count(len(entries), src, lim)
        labels = torch.tensor([_label(e[0], src) for e in entries]) if labelled else None
        images = _decode_all(entries, preprocess, lim, src)
    return images, labels  # [N, 3, H, W], [N] int64


def load_images(path: Path, preprocess: Preprocess,
                limits: DataLimits = DEFAULT_LIMITS) -> HostImages:
    """Unlabeled inputs `[N, 3, H, W]` kept on the host (see calm.images)."""
    return _load(path, preprocess, False, limits)[0]


def load_labelled(path: Path, preprocess: Preprocess,
                  limits: DataLimits = DEFAULT_LIMITS) -> tuple[HostImages, torch.Tensor]:
    """Eval inputs: images `[N, 3, H, W]` on the host and labels `[N]` int64."""
    images, labels = _load(path, preprocess, True, limits)
    assert labels is not None
    return images, labels


def describe_data(path: Path, preprocess: Preprocess, labelled: bool = False,
                  limits: DataLimits = DEFAULT_LIMITS) -> DataInfo:
    """Checks a data source without decoding images: format, count, shapes, class folders."""
    path = Path(path)
    kind = data_kind(path)
    if kind in ("dir", "zip", "tar"):
        with _image_entries(path, kind, limits) as entries:
            names = [e[0] for e in entries]
        if not names:
            raise DataError(f"{path.name}: no PNG/JPEG images found")
        _check_count(len(names), path.name, limits)
        labels = [_label(nm, path.name) for nm in names] if labelled else []
        return DataInfo(kind, len(names), max(labels) + 1 if labels else None)
    _check_size(path, kind, limits)
    shape, dkind = _tensor_header(path, kind, "images")
    _check_images_meta(shape, dkind, expected_shape(preprocess), path.name)
    if not labelled:
        _check_count(shape[0], path.name, limits)
        return DataInfo(kind, shape[0])
    _check_count(shape[0], path.name, limits)
    y = _check_labels(_tensor_file(path, kind, ("labels",))[0], shape[0], path.name)
    return DataInfo(kind, shape[0], int(y.max()) + 1)
