"""Upload validation (torch-free): what a file is, and whether it fits its purpose.

Runs on the stored bytes before a file becomes `processed`. Reads headers and archive listings
only, never tensor data, and never unpickles: .pt/.bin/.pth/.ckpt are refused with a message
that says how to convert them.
"""

from __future__ import annotations

import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from core.tensor_headers import (
    FLOAT_DTYPES,
    INT_DTYPES,
    HeaderError,
    read_npy_header,
    read_safetensors_header,
)

EXTENSIONS = {".safetensors": "safetensors", ".npz": "npz", ".zip": "zip", ".tar": "tar"}
PICKLE_EXTENSIONS = {".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle"}
PURPOSE_FORMATS = {
    "checkpoint": {"safetensors"},
    "head": {"safetensors"},
    "dataset": {"safetensors", "npz", "zip", "tar"},
    "eval": {"safetensors", "npz", "zip", "tar"},
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
CONVERT_HINT = (
    "pickled checkpoints are not accepted (loading them can run arbitrary code); convert it "
    "on your machine with `calm-merge convert in.pt out.safetensors` and upload the .safetensors"
)


class FileCheckError(ValueError):
    """The file cannot be used; `code` is stable, `message` says what to fix."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 100 * 1024 * 1024
    max_members: int = 200_000


def format_for(filename: str, purpose: str | None = None) -> str:
    """The format implied by the file name; refuses pickles, unknown suffixes and (given a
    purpose) formats that purpose cannot use."""
    suffix = PurePosixPath(filename.lower()).suffix
    if suffix in PICKLE_EXTENSIONS:
        raise FileCheckError("unsupported_checkpoint_format", f"{filename}: {CONVERT_HINT}")
    fmt = EXTENSIONS.get(suffix)
    allowed = sorted(PURPOSE_FORMATS[purpose] if purpose else EXTENSIONS.values())
    if fmt is None or fmt not in allowed:
        what = f"a {purpose} file" if purpose else "an upload"
        raise FileCheckError(
            "unsupported_file_type",
            f"{filename}: {what} must be one of: " + ", ".join(f".{f}" for f in allowed),
        )
    return fmt


def _looks_pickled(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80":  # pickle protocol >= 2
        return True
    if head == b"PK\x03\x04" and zipfile.is_zipfile(path):  # torch.save's zip format
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("data.pkl") for n in z.namelist())
    return False


def _safetensors(path: Path, limits: Limits) -> dict[str, Any]:
    try:
        return read_safetensors_header(path, limits.max_header_bytes)
    except HeaderError as e:
        if _looks_pickled(path):
            raise FileCheckError("unsupported_checkpoint_format", CONVERT_HINT) from None
        raise FileCheckError("invalid_safetensors", f"not a valid safetensors file: {e}") from None


def _safe_member(name: str) -> str:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise FileCheckError("unsafe_archive", f"archive member {name!r} escapes the archive")
    return p.as_posix()


def list_archive(path: Path, fmt: str, limits: Limits) -> list[str]:
    """Names of the regular files in a .zip/.tar; refuses traversal, links, too many members."""
    names: list[str] = []
    try:
        if fmt == "zip":
            with zipfile.ZipFile(path) as z:
                infos = z.infolist()
                if len(infos) > limits.max_members:
                    raise FileCheckError("too_many_members", f"more than {limits.max_members} files")
                names = [_safe_member(i.filename) for i in infos if not i.is_dir()]
        else:
            with tarfile.open(path, "r:") as t:
                for m in t:
                    if len(names) >= limits.max_members:
                        raise FileCheckError("too_many_members", f"more than {limits.max_members} files")
                    if m.isdir():
                        continue
                    if not m.isfile():
                        raise FileCheckError(
                            "unsafe_archive", f"archive member {m.name!r} is a link or device"
                        )
                    names.append(_safe_member(m.name))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise FileCheckError("invalid_archive", f"not a readable {fmt} archive ({e})") from None
    return names


def _images(names: list[str]) -> list[PurePosixPath]:
    return [p for p in map(PurePosixPath, names) if p.suffix.lower() in IMAGE_SUFFIXES]


def _tensor_data(table: dict[str, dict[str, Any]], purpose: str, where: str) -> dict[str, Any]:
    """Checks 'images' [N,3,H,W] (and 'labels' [N] for eval) in a tensor table."""
    code = "invalid_dataset" if purpose == "dataset" else "invalid_eval_data"
    images = table.get("images")
    if images is None or len(images["shape"]) != 4 or images["shape"][1] != 3:
        raise FileCheckError(code, f"{where}: needs 'images' shaped [N, 3, H, W]")
    n = images["shape"][0]
    if n < 1:
        raise FileCheckError(code, f"{where}: 'images' is empty")
    meta: dict[str, Any] = {"images": n, "image_shape": images["shape"][1:]}
    if purpose == "eval":
        labels = table.get("labels")
        if labels is None or labels["shape"] != [n] or not labels["integer"]:
            raise FileCheckError(code, f"{where}: needs integer 'labels' shaped [{n}]")
    return meta


def _npz_table(path: Path, limits: Limits) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist()[: limits.max_members]:
                if name in ("images.npy", "labels.npy"):
                    with z.open(name) as f:
                        info = read_npy_header(f)
                    kind = info["dtype"].lstrip("<>|=")[:1]
                    table[name[:-4]] = {**info, "integer": kind in ("i", "u")}
    except HeaderError as e:
        raise FileCheckError("invalid_npz", f"{path.name}: {e}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise FileCheckError("invalid_npz", f"not a readable .npz file ({e})") from None
    return table


def _archive_data(path: Path, fmt: str, purpose: str, limits: Limits) -> dict[str, Any]:
    images = _images(list_archive(path, fmt, limits))
    code = "invalid_dataset" if purpose == "dataset" else "invalid_eval_data"
    if not images:
        raise FileCheckError(code, "the archive holds no .png/.jpg/.jpeg images")
    if purpose == "dataset":
        return {"images": len(images)}
    bad = [p.as_posix() for p in images if not p.parent.name.isdigit()]
    if bad:
        raise FileCheckError(
            code, f"eval images must sit in one folder per class index (0/, 1/, ...): {bad[0]!r}"
        )
    return {"images": len(images), "classes": len({int(p.parent.name) for p in images})}


def check_file(path: Path, fmt: str, purpose: str, limits: Limits | None = None) -> dict[str, Any]:
    """Validates a stored upload for `purpose`; returns its metadata or raises FileCheckError."""
    limits = limits or Limits()
    if fmt in ("zip", "tar"):
        return _archive_data(path, fmt, purpose, limits)
    if fmt == "npz":
        return _tensor_data(_npz_table(path, limits), purpose, path.name)
    info = _safetensors(path, limits)
    tensors = info["tensors"]
    if purpose == "checkpoint":
        if not any(t["dtype"] in FLOAT_DTYPES for t in tensors.values()):
            raise FileCheckError("invalid_checkpoint", "the checkpoint has no floating tensors")
        return info
    if purpose == "head":
        w = tensors.get("weight")
        if w is None or len(w["shape"]) != 2 or w["shape"][0] < 2 or w["dtype"] not in FLOAT_DTYPES:
            raise FileCheckError("invalid_head", "a head file needs a float 'weight' [C>=2, D]")
        return {"classes": w["shape"][0], "embed_dim": w["shape"][1], "dtype": w["dtype"]}
    table = {k: {**v, "integer": v["dtype"] in INT_DTYPES} for k, v in tensors.items()}
    return _tensor_data(table, purpose, path.name)
