"""Which files of a folder or archive are images, and what label each image has — the one
place for both the library (calm.data) and the service's upload and job checks (core). No torch.

- Images: every file whose suffix names a format Pillow can read (PNG, JPEG, WebP, BMP, GIF,
  TIFF, ...); hidden files (a part starting with '.') and `__MACOSX/` are skipped, and so is
  everything else — the skipped names are reported (`skipped_note`), never silently dropped.
- Labels (eval data): the image's folder — a class name of the task (`even/`, `odd/`) or a
  class index (`0/`, `1/`) — or a CSV `filename,label` (task field `eval_labels`), label a
  class name or a class index. A class name wins over an index when a name is also a number.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePosixPath

from PIL import Image

# Formats Pillow lists as readable but cannot decode here: external programs (EPS needs
# Ghostscript, WMF is Windows-only), identify-only stubs (MPEG, BUFR, GRIB, HDF5).
_NOT_DECODABLE = frozenset({"EPS", "MPEG", "WMF", "BUFR", "GRIB", "HDF5"})
MAX_LISTED = 5  # names shown in a message before "and N more"
CSV_HEADER_LABELS = frozenset({"label", "labels", "class", "classname", "class_name", "target", "category"})


def _readable() -> dict[str, str]:
    Image.init()
    return {ext: fmt for ext, fmt in Image.registered_extensions().items()
            if fmt in Image.OPEN and fmt not in _NOT_DECODABLE}


IMAGE_SUFFIXES: Mapping[str, str] = _readable()  # ".webp" -> "WEBP", ...
IMAGE_FORMATS = frozenset(IMAGE_SUFFIXES.values())  # what a decoded image may turn out to be


class LabelError(ValueError):
    """Images and labels that do not fit; the message says what to change."""


def listing(names: Sequence[str], limit: int = MAX_LISTED) -> str:
    """'a, b, c' or 'a, b, c, d, e and 7 more'."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def is_hidden(name: str) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in PurePosixPath(name).parts)


def is_image(name: str) -> bool:
    """A normalised member name that counts as an image (by suffix, not hidden)."""
    return not is_hidden(name) and PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def skipped_note(skipped: Sequence[str]) -> str:
    """What a person is told about files that were left out."""
    what = "file that is" if len(skipped) == 1 else "files that are"
    return f"skipped {len(skipped)} {what} not an image or hidden: {listing(list(skipped))}"


def resolve_label(value: str, classnames: Sequence[str] | None, num_classes: int | None) -> int | None:
    """A class name -> its index; else a non-negative decimal index (below `num_classes` when
    known). None when `value` is neither."""
    if classnames is not None and value in classnames:
        return list(classnames).index(value)
    if value.isascii() and value.isdigit():
        index = int(value)
        return index if num_classes is None or index < num_classes else None
    return None


def _valid_labels(classnames: Sequence[str] | None, num_classes: int | None) -> str:
    n = len(classnames) if classnames is not None else num_classes
    index = f"an index 0-{n - 1}" if n else "a class index (0, 1, ...)"
    return f"a class name ({listing(list(classnames))}) or {index}" if classnames else index


def folder_labels(names: Iterable[str], classnames: Sequence[str] | None,
                  num_classes: int | None) -> list[int]:
    """The label of each image from its folder (class name or index). LabelError otherwise."""
    names = list(names)
    folders = [PurePosixPath(n).parent.name for n in names]
    loose = [n for n, f in zip(names, folders, strict=True) if not f]
    if loose:
        raise LabelError(f"{len(loose)} image(s) are not in a class folder ({listing(loose)}); put each "
                         f"image in a folder named by its class ({_valid_labels(classnames, num_classes)}) "
                         "or give eval_labels, a CSV of filename,label")
    index = {f: resolve_label(f, classnames, num_classes) for f in sorted(set(folders))}
    bad = [f"{f}/" for f, i in index.items() if i is None]
    if bad:
        raise LabelError(f"folder(s) {listing(bad)} name no class: a class folder is named by "
                         f"{_valid_labels(classnames, num_classes)}; or give eval_labels, a CSV of "
                         "filename,label")
    return [index[f] for f in folders]  # type: ignore[misc]


def _clean_name(name: str) -> str:
    name = name.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def read_label_csv(data: bytes, max_rows: int) -> dict[str, str]:
    """`filename,label` rows (an optional header row whose second cell is 'label', 'class', ...)
    -> {filename: label}. UTF-8 (a BOM is fine). LabelError on a malformed table."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise LabelError(f"not UTF-8 text ({e.reason} at byte {e.start}); save the CSV as UTF-8") from None
    rows: dict[str, str] = {}
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        for i, row in enumerate(reader, start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 2:
                raise LabelError(f"line {i}: expected 2 columns (filename,label), got {len(row)}")
            name, label = _clean_name(row[0]), row[1].strip()
            if not rows and i == 1 and label.lower() in CSV_HEADER_LABELS:
                continue  # a header row
            parts = PurePosixPath(name).parts
            if not name or not label:
                raise LabelError(f"line {i}: empty filename or label")
            if name.startswith("/") or ".." in parts:
                raise LabelError(f"line {i}: {name!r} must be a path inside the eval folder or archive")
            if name in rows:
                raise LabelError(f"line {i}: {name!r} is labelled twice")
            if len(rows) >= max_rows:
                raise LabelError(f"more than {max_rows} rows")
            rows[name] = label
    except csv.Error as e:
        raise LabelError(f"not a readable CSV ({e})") from None
    if not rows:
        raise LabelError("no rows; expected filename,label lines")
    return rows


def csv_labels(names: Sequence[str], rows: Mapping[str, str], classnames: Sequence[str] | None,
               num_classes: int | None) -> list[int | None]:
    """The label of each image from the CSV rows, matched by its path in the folder or archive
    (or by its file name, where that is unique); None for an image the CSV does not list.
    LabelError when a row names no image or has no valid label."""
    by_path = {n: i for i, n in enumerate(names)}
    base: dict[str, int | None] = {}
    for i, n in enumerate(names):
        b = PurePosixPath(n).name
        base[b] = None if b in base else i  # None: ambiguous
    out: list[int | None] = [None] * len(names)
    missing, invalid = [], []
    for name, label in rows.items():
        i = by_path.get(name)
        if i is None and "/" not in name:
            i = base.get(name)
        if i is None:
            missing.append(name)
            continue
        out[i] = resolve_label(label, classnames, num_classes)
        if out[i] is None:
            invalid.append(f"{name}: {label!r}")
    if missing:
        raise LabelError(f"{len(missing)} labelled file(s) are not images of the eval data: "
                         f"{listing(missing)} (filenames are paths inside the eval folder or archive, "
                         "or bare file names where those are unique)")
    if invalid:
        raise LabelError(f"{len(invalid)} label(s) name no class: {listing(invalid)}; a label is "
                         f"{_valid_labels(classnames, num_classes)}")
    return out


def unlabelled_note(names: Sequence[str]) -> str:
    return (f"{len(names)} image(s) have no row in eval_labels and are left out of the evaluation: "
            f"{listing(list(names))}")
