"""Task inputs: images from a directory / .zip / .tar(.gz), or preprocessed tensor files.

Archives are read in memory (never extracted), members sorted by name for determinism. Decoded
images stay on the host as uint8 pixels (calm.images); a set above `max_images` is an error,
never silently truncated.
Which files are images and how labelled sets are labelled — a class folder (`0/` or `even/`),
or a CSV `filename,label` beside a flat folder — is calm.image_sets, shared with the service.
Files that are skipped (not images, hidden) are named in a log warning.
"""

from __future__ import annotations

import io
import json
import logging
import mmap
import os
import tarfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
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
from calm.image_sets import (
    IMAGE_FORMATS,
    LabelError,
    csv_labels,
    folder_labels,
    is_image,
    read_label_csv,
    skipped_note,
    unlabelled_note,
)
from calm.images import HostImages, split_preprocess, to_uint8

Preprocess = Callable[[Any], torch.Tensor]  # PIL image -> [3, H, W]
Kind = Literal["dir", "zip", "tar", "safetensors", "npz"]
Entry = tuple[str, Callable[[], bytes]]  # (member name, reader)
log = logging.getLogger("calm.data")
MAX_CSV_BYTES = 64 << 20


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
    notes: tuple[str, ...] = ()  # files skipped, images without a label


@dataclass(frozen=True)
class Labelling:
    """How the images of a labelled folder or archive get their labels: class folders (names
    from `classnames`, or indices below `num_classes`), or the CSV `csv` (calm.image_sets)."""

    classnames: Sequence[str] | None = None
    num_classes: int | None = None
    csv: Path | None = None


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
                    ".tar(.gz) of images, or .safetensors/.npz with key 'images'")


def _member_name(name: str, src: str) -> str:
    """Normalised member name; DataError for path traversal."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise DataError(f"{src}: unsafe member name {name!r} (absolute or '..')")
    return "/".join(p for p in parts if p != ".")


def _list_images(path: Path, kind: Kind, lim: DataLimits, tf: Any = None) -> tuple[list[Entry], list[str]]:
    """(name, reader) of every image in a directory (no symlinks), zip or tar, unsorted; and
    the names of the files skipped (not images, hidden)."""
    out: list[Entry] = []
    skipped: list[str] = []
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
        if not is_image(name):
            skipped.append(name)
            continue
        total += size
        if size > lim.max_member_bytes or total > lim.max_total_bytes or len(out) >= lim.max_members:
            raise DataError(f"{path.name}: too much image data at {name} (limits: "
                            f"{lim.max_member_bytes} bytes per file, {lim.max_total_bytes} in all, "
                            f"{lim.max_members} files)")
        if kind == "tar":
            read = (lambda d: lambda: d)(read())
        out.append((name, read))
    return out, skipped


@contextmanager
def _image_entries(path: Path, kind: Kind, lim: DataLimits) -> Iterator[tuple[list[Entry], list[str]]]:
    """Image members of a directory or archive, sorted by name; the skipped names, sorted."""
    try:
        with ExitStack() as stack:
            archive: Any = None
            if kind == "zip":
                archive = stack.enter_context(zipfile.ZipFile(path))
            elif kind == "tar":
                archive = stack.enter_context(tarfile.open(path, "r:*"))
            entries, skipped = _list_images(path, kind, lim, archive)
            yield sorted(entries, key=lambda e: e[0]), sorted(skipped)
    except (zipfile.BadZipFile, tarfile.TarError, OSError, RuntimeError, EOFError) as e:
        raise DataError(f"{path.name}: unreadable ({e})") from None


def expected_shape(preprocess: Preprocess) -> tuple[int, ...]:
    """(3, H, W) that `preprocess` produces."""
    return tuple(preprocess(Image.new("RGB", (64, 64))).shape)


def _decode(name: str, data: bytes, preprocess: Preprocess, lim: DataLimits, src: str) -> torch.Tensor:
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in IMAGE_FORMATS:
                raise DataError(f"{src}: {name} is {img.format}, which cannot be decoded here")
            if img.size[0] * img.size[1] > lim.max_pixels:
                raise DataError(f"{src}: {name} is {img.size} pixels (limit {lim.max_pixels})")
            return preprocess(img.convert("RGB"))  # [3, H, W]
    except DataError:
        raise
    except Exception as e:  # PIL raises OSError, ValueError, DecompressionBombError, ...
        raise DataError(f"{src}: cannot decode image {name} ({e})") from None


def read_labels(path: Path) -> dict[str, str]:
    """The rows of an `eval_labels` CSV (calm.image_sets.read_label_csv)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"eval_labels {path.name}: no such file")
    if path.stat().st_size > MAX_CSV_BYTES:
        raise DataError(f"eval_labels {path.name}: larger than {MAX_CSV_BYTES} bytes")
    try:
        return read_label_csv(path.read_bytes(), DEFAULT_LIMITS.max_members)
    except LabelError as e:
        raise DataError(f"eval_labels {path.name}: {e}") from None


def _labels(names: list[str], src: str, how: Labelling) -> tuple[list[int], list[int], list[str]]:
    """(positions of the labelled images, their labels, notes) for image `names`."""
    try:
        if how.csv is None:
            return list(range(len(names))), folder_labels(names, how.classnames, how.num_classes), []
        found = csv_labels(names, read_labels(how.csv), how.classnames, how.num_classes)
    except LabelError as e:
        raise DataError(f"{src}: {e}") from None
    keep = [i for i, y in enumerate(found) if y is not None]
    left = [names[i] for i, y in enumerate(found) if y is None]
    return keep, [found[i] for i in keep], [unlabelled_note(left)] if left else []  # type: ignore[misc]


def _warn(src: str, notes: list[str]) -> None:
    for note in notes:
        log.warning("%s: %s", src, note)


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


@contextmanager
def _image_set(path: Path, kind: Kind, lim: DataLimits,
               how: Labelling | None) -> Iterator[tuple[list[Entry], list[int] | None, list[str]]]:
    """The images of a folder or archive (the labelled ones, with `how`), their labels, notes."""
    src = path.name
    with _image_entries(path, kind, lim) as (entries, skipped):
        if not entries:
            what = f"; skipped: {', '.join(skipped[:5])}" if skipped else ""
            raise DataError(f"{src}: no images found (PNG, JPEG, WebP, BMP, GIF, TIFF, ...){what}")
        _check_count(len(entries), src, lim)
        notes = [skipped_note(skipped)] if skipped else []
        if how is None:
            yield entries, None, notes
            return
        keep, labels, more = _labels([e[0] for e in entries], src, how)
        yield [entries[i] for i in keep], labels, notes + more


def _tensor_labels(path: Path, how: Labelling, y: torch.Tensor, n: int) -> torch.Tensor:
    if how.csv is not None:
        raise DataError(f"{path.name} is a tensor file with its own 'labels'; eval_labels labels "
                        "the images of a folder or archive: leave it out")
    y = _check_labels(y, n, path.name)
    if how.num_classes is not None and y.numel() and int(y.max()) >= how.num_classes:
        raise DataError(f"{path.name}: labels go up to {int(y.max())} but the task has "
                        f"{how.num_classes} classes")
    return y


def _load(path: Path, preprocess: Preprocess, how: Labelling | None,
          lim: DataLimits) -> tuple[HostImages, torch.Tensor | None]:
    path, src = Path(path), Path(path).name
    kind = data_kind(path)
    if kind in ("safetensors", "npz"):
        _check_size(path, kind, lim)
        arrays = _tensor_file(path, kind, ("images",) if how is None else ("images", "labels"))
        images = _check_images(arrays[0], expected_shape(preprocess), src, lim)
        return images, None if how is None else _tensor_labels(path, how, arrays[1], len(images))
    with _image_set(path, kind, lim, how) as (entries, labels, notes):
        _warn(src, notes)
        images = _decode_all(entries, preprocess, lim, src)
    return images, None if labels is None else torch.tensor(labels, dtype=torch.int64)


def load_images(path: Path, preprocess: Preprocess,
                limits: DataLimits = DEFAULT_LIMITS) -> HostImages:
    """Unlabeled inputs `[N, 3, H, W]` kept on the host (see calm.images). Folders are free."""
    return _load(path, preprocess, None, limits)[0]


def load_labelled(path: Path, preprocess: Preprocess, limits: DataLimits = DEFAULT_LIMITS,
                  labelling: Labelling | None = None) -> tuple[HostImages, torch.Tensor]:
    """Eval inputs: images `[N, 3, H, W]` on the host and labels `[N]` int64 — from a tensor
    file's 'labels', the images' class folders or a CSV (`labelling`)."""
    images, labels = _load(path, preprocess, labelling or Labelling(), limits)
    assert labels is not None
    return images, labels


def describe_data(path: Path, preprocess: Preprocess, labelled: bool = False,
                  limits: DataLimits = DEFAULT_LIMITS, labelling: Labelling | None = None) -> DataInfo:
    """Checks a data source without decoding images: format, count, shapes, labels (class
    folders or CSV rows against the classes); notes on skipped files and unlabelled images."""
    path = Path(path)
    kind = data_kind(path)
    how = (labelling or Labelling()) if labelled or labelling is not None else None
    if kind in ("dir", "zip", "tar"):
        with _image_set(path, kind, limits, how) as (entries, labels, notes):
            count = len(entries)
        return DataInfo(kind, count, max(labels) + 1 if labels else None, tuple(notes))
    _check_size(path, kind, limits)
    shape, dkind = _tensor_header(path, kind, "images")
    _check_images_meta(shape, dkind, expected_shape(preprocess), path.name)
    _check_count(shape[0], path.name, limits)
    if how is None:
        return DataInfo(kind, shape[0])
    y = _tensor_labels(path, how, _tensor_file(path, kind, ("labels",))[0], shape[0])
    return DataInfo(kind, shape[0], int(y.max()) + 1 if y.numel() else None)
