"""Upload validation (torch-free): what a file is, and whether the worker will be able to use it.

Runs on the stored bytes before a file becomes `processed`, and refuses everything the worker
would refuse later: malformed safetensors headers, dtypes it cannot handle, NaN/Inf values
(checked while the upload streams, core.tensor_stream), .npz files that are header-only or cut
short, archives that are bombs, links, cut short or hold undecodable images (core.archive_checks),
label CSVs that are not `filename,label` tables (calm.image_sets, the worker's own parser).
Never unpickles: .pt/.bin/.pth/.ckpt are refused with a message that says how to convert them.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from calm.image_sets import LabelError, read_label_csv, skipped_note
from core.archive_checks import FileCheckError, Limits, check_images, zip_members
from core.tensor_headers import FLOAT_DTYPES, HeaderError, read_npy_header, read_safetensors_header
from core.tensor_stream import NonFiniteError, scan_file

__all__ = ["HIDDEN_META", "FileCheckError", "Limits", "check_file", "format_for"]
EXTENSIONS = {".safetensors": "safetensors", ".npz": "npz", ".zip": "zip", ".tar": "tar", ".csv": "csv"}
PICKLE_EXTENSIONS = {".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle"}
PURPOSE_FORMATS = {
    "checkpoint": {"safetensors"},
    "head": {"safetensors"},
    "dataset": {"safetensors", "npz", "zip", "tar"},
    "eval": {"safetensors", "npz", "zip", "tar", "csv"},  # csv: the labels of an image archive
}
# Metadata kept for the job checks but not shown in file responses (large tables).
HIDDEN_META = frozenset({"tensors", "image_names", "folders", "labels"})
CONVERT_HINT = (
    "pickled checkpoints are not accepted (loading them can run arbitrary code); convert it "
    "on your machine with `calm-merge convert in.pt out.safetensors` (a pickled whole model "
    "needs `--trust-pickle`, for files you trust) and upload the .safetensors"
)
IMAGE_DTYPES = {"F16", "BF16", "F32", "F64"}  # what the worker turns into float32 images
LABEL_NUMPY = {"I8": "<i1", "I16": "<i2", "I32": "<i4", "I64": "<i8",
               "U8": "<u1", "U16": "<u2", "U32": "<u4", "U64": "<u8"}  # fmt: skip
LABEL_DTYPES = set(LABEL_NUMPY)
NO_F8 = "float8 tensors are not supported; save them as F16, BF16 or F32"
MAX_STORED_METADATA = 16 * 1024  # a safetensors __metadata__ larger than this is not kept


def format_for(filename: str, purpose: str | None = None) -> str:
    """The format implied by the file name; refuses pickles, unknown suffixes and (given a
    purpose) formats that purpose cannot use."""
    suffix = PurePosixPath(filename.lower()).suffix
    if suffix in PICKLE_EXTENSIONS:
        raise FileCheckError("unsupported_checkpoint_format", f"{filename}: {CONVERT_HINT}")
    fmt = EXTENSIONS.get(suffix)
    allowed = sorted(PURPOSE_FORMATS[purpose] if purpose in PURPOSE_FORMATS else EXTENSIONS.values())
    if fmt is None or fmt not in allowed:
        what = f"a {purpose} file" if purpose in PURPOSE_FORMATS else "an upload"
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
            return any(n.endswith("data.pkl") for n in z.namelist()[:10_000])
    return False


def _worker_sniff_ok(path: Path) -> None:
    """The worker tells formats apart by their first bytes (calm.checkpoints.sniff_format) and
    by a zip directory anywhere (calm.data.data_kind); a safetensors file that would be misread
    there is refused here."""
    with path.open("rb") as f:
        head = f.read(2)
    if head[0] == 0x80 and 2 <= head[1] <= 5 or zipfile.is_zipfile(path):
        raise FileCheckError(
            "invalid_safetensors",
            "the worker would misread this file's first bytes as a pickle or zip; re-save it "
            "(e.g. with a small change to its __metadata__) so the header length changes",
        )


def _safetensors(path: Path, limits: Limits, scanned: bool) -> dict[str, Any]:
    try:
        info = read_safetensors_header(path, limits.max_header_bytes)
    except HeaderError as e:
        if _looks_pickled(path):
            raise FileCheckError("unsupported_checkpoint_format", CONVERT_HINT) from None
        raise FileCheckError("invalid_safetensors", f"not a valid safetensors file: {e}") from None
    _worker_sniff_ok(path)
    if info["num_tensors"] > limits.max_tensors:
        raise FileCheckError("invalid_safetensors", f"more than {limits.max_tensors} tensors")
    if any(t["dtype"].startswith("F8_") for t in info["tensors"].values()):
        raise FileCheckError("unsupported_dtype", NO_F8)
    if len(json.dumps(info["metadata"])) > MAX_STORED_METADATA:
        info["metadata"] = {"omitted": f"__metadata__ is over {MAX_STORED_METADATA} bytes"}
    if not scanned:
        try:
            scan_file(path, limits.max_header_bytes)
        except NonFiniteError as e:
            raise FileCheckError("non_finite_values", str(e)) from None
    return info


def _data_code(purpose: str) -> str:
    return "invalid_dataset" if purpose == "dataset" else "invalid_eval_data"


def _tensor_data(table: dict[str, dict[str, Any]], purpose: str, where: str) -> dict[str, Any]:
    """Checks 'images' [N,3,H,W] float (and 'labels' [N] integer for eval) in a tensor table."""
    code = _data_code(purpose)
    images = table.get("images")
    if images is None or len(images["shape"]) != 4 or images["shape"][1] != 3:
        raise FileCheckError(code, f"{where}: needs 'images' shaped [N, 3, H, W]")
    if not images["float"]:
        raise FileCheckError(code, f"{where}: 'images' must be float16/bfloat16/float32/float64")
    n = images["shape"][0]
    if n < 1:
        raise FileCheckError(code, f"{where}: 'images' is empty")
    meta: dict[str, Any] = {"images": n, "image_shape": images["shape"][1:]}
    if purpose == "eval":
        labels = table.get("labels")
        if labels is None or labels["shape"] != [n] or not labels["integer"]:
            raise FileCheckError(code, f"{where}: needs integer 'labels' shaped [{n}]")
    return meta


def _check_labels(values: np.ndarray, purpose: str, where: str) -> dict[str, Any]:
    if values.size and int(values.min()) < 0:
        raise FileCheckError(_data_code(purpose), f"{where}: 'labels' must be non-negative class indices")
    return {"classes": int(values.max()) + 1 if values.size else 0}


def _safetensors_data(path: Path, info: dict[str, Any], purpose: str) -> dict[str, Any]:
    t = info["tensors"]
    table = {
        k: {**v, "float": v["dtype"] in IMAGE_DTYPES, "integer": v["dtype"] in LABEL_DTYPES}
        for k, v in t.items()
    }
    meta = _tensor_data(table, purpose, path.name)
    if purpose == "eval":
        start, end = info["spans"]["labels"]
        with path.open("rb") as f:
            f.seek(start)
            raw = f.read(end - start)
        dtype = np.dtype(LABEL_NUMPY[t["labels"]["dtype"]])
        meta.update(_check_labels(np.frombuffer(raw, dtype=dtype), purpose, path.name))
    return meta


def _npy_values(z: zipfile.ZipFile, member: str, info: dict[str, Any]) -> np.ndarray | None:
    """Reads an array's data in 1 MiB steps (CRC checked at the end): images must be finite;
    returns the values of an integer array (labels)."""
    dtype = np.dtype(info["dtype"])
    step = max(1, (1 << 20) // dtype.itemsize) * dtype.itemsize
    ints: list[np.ndarray] = []
    with z.open(member) as f:
        f.read(info["header_bytes"])
        left = info["data_bytes"]
        while left > 0:
            want = min(step, left)
            chunk = f.read(want)
            if len(chunk) != want:
                raise FileCheckError("invalid_npz", f"{member}: its data is cut short")
            left -= want
            arr = np.frombuffer(chunk, dtype=dtype)
            if dtype.kind == "f" and not np.isfinite(arr).all():
                raise FileCheckError("non_finite_values", f"{member} holds NaN or Inf values")
            if dtype.kind in "iu":
                ints.append(arr)
    return np.concatenate(ints) if ints else None


def _npz_data(path: Path, purpose: str, limits: Limits) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    values: dict[str, np.ndarray | None] = {}
    try:
        with zipfile.ZipFile(path) as z:
            members = zip_members(z, limits)
            if not members or not all(i.filename.endswith(".npy") for i in members):
                raise FileCheckError("invalid_npz", "an .npz may hold only .npy arrays")
            for i in members:
                if i.filename not in ("images.npy", "labels.npy"):
                    continue
                with z.open(i) as f:
                    info = read_npy_header(f)
                if i.file_size != info["header_bytes"] + info["data_bytes"]:
                    raise FileCheckError(
                        "invalid_npz",
                        f"{i.filename}: holds {i.file_size} bytes, its header promises "
                        f"{info['header_bytes'] + info['data_bytes']} (header-only or cut short)",
                    )
                kind, size = info["dtype"][1], np.dtype(info["dtype"]).itemsize
                table[i.filename[:-4]] = {**info, "float": kind == "f" and size in (2, 4, 8),
                                          "integer": kind in ("i", "u")}  # fmt: skip
            meta = _tensor_data(table, purpose, path.name)
            for name in table:
                values[name] = _npy_values(z, f"{name}.npy", table[name])
    except FileCheckError:
        raise
    except HeaderError as e:
        raise FileCheckError("invalid_npz", f"{path.name}: {e}") from None
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError) as e:
        raise FileCheckError("invalid_npz", f"not a readable .npz file ({str(e)[:200]})") from None
    if purpose == "eval" and values.get("labels") is not None:
        meta.update(_check_labels(values["labels"], purpose, path.name))  # type: ignore[arg-type]
    return meta


def _archive_data(path: Path, fmt: str, purpose: str, limits: Limits) -> dict[str, Any]:
    """Image count, skipped files; for eval sets also what POST /v1/merges needs to label them
    (core.job_validation.check_eval): each image's name and the class folders."""
    if fmt == "tar" and zipfile.is_zipfile(path):
        raise FileCheckError("invalid_archive", "this .tar is also a zip archive; upload it as .zip")
    names, skipped = check_images(path, fmt, limits)
    if not names:
        raise FileCheckError(_data_code(purpose), "the archive holds no images (PNG, JPEG, WebP, BMP, "
                             "GIF, TIFF, ...)" + (f"; {skipped_note(skipped)}" if skipped else ""))
    meta: dict[str, Any] = {"images": len(names)}
    if skipped:
        meta.update(skipped=len(skipped), note=skipped_note(skipped))
    if purpose == "dataset":
        return meta
    folders = sorted({PurePosixPath(n).parent.name for n in names})
    if all(f.isascii() and f.isdigit() for f in folders):
        meta["classes"] = max(int(f) for f in folders) + 1
    return {**meta, "folders": folders, "image_names": names}


def _csv_data(path: Path, purpose: str, limits: Limits) -> dict[str, Any]:
    """An eval label table, `filename,label` (checked against its images and the task's classes
    when a job uses it)."""
    if purpose != "eval":
        raise FileCheckError("unsupported_file_type", "a CSV file can only be an eval label table")
    if path.stat().st_size > limits.max_csv_bytes:
        raise FileCheckError("invalid_eval_data", f"a label CSV may hold at most {limits.max_csv_bytes} "
                             "bytes")
    try:
        rows = read_label_csv(path.read_bytes(), limits.max_images)
    except LabelError as e:
        raise FileCheckError("invalid_eval_data", f"label CSV: {e}") from None
    return {"rows": len(rows), "labels": rows}


def check_file(
    path: Path, fmt: str, purpose: str, limits: Limits | None = None, *, scanned: bool = False
) -> dict[str, Any]:
    """Validates a stored upload for `purpose`; returns its metadata or raises FileCheckError.
    `scanned`: its float values were already checked while it streamed in."""
    limits = limits or Limits()
    if fmt in ("zip", "tar"):
        return _archive_data(path, fmt, purpose, limits)
    if fmt == "csv":
        return _csv_data(path, purpose, limits)
    if fmt == "npz":
        return _npz_data(path, purpose, limits)
    info = _safetensors(path, limits, scanned)
    tensors = info["tensors"]
    if purpose in ("dataset", "eval"):
        if path.stat().st_size > limits.max_archive_bytes:
            raise FileCheckError(_data_code(purpose), f"more than {limits.max_archive_bytes} bytes of data")
        return _safetensors_data(path, info, purpose)
    info.pop("spans")
    if purpose == "checkpoint":
        if not any(t["dtype"] in FLOAT_DTYPES for t in tensors.values()):
            raise FileCheckError("invalid_checkpoint", "the checkpoint has no floating tensors")
        return info
    w = tensors.get("weight")
    if w is None or len(w["shape"]) != 2 or w["shape"][0] < 2 or w["dtype"] not in FLOAT_DTYPES:
        raise FileCheckError("invalid_head", "a head file needs a float 'weight' [C>=2, D]")
    return {"classes": w["shape"][0], "embed_dim": w["shape"][1], "dtype": w["dtype"]}
