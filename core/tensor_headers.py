"""Read tensor tables from file headers without loading tensors (and without torch).

- safetensors: 8-byte little-endian header length, then a JSON object name -> {dtype, shape,
  data_offsets}. The JSON is parsed only after a linear scan bounds its nesting depth (a header
  nested 100,000 deep must not exhaust the recursion limit), and every field is type-, bounds-
  and consistency-checked the way the safetensors library does (offsets tile the data section
  exactly, sizes match dtype x shape). The first byte must be '{' (how the worker sniffs it).
- .npy (inside .npz): numpy's own header reader with its header-size cap (literals only, never
  pickle, never an unbounded expression); object and structured dtypes are refused.
"""

from __future__ import annotations

import io
import json
import math
import struct
from pathlib import Path
from typing import IO, Any

import numpy as np

# safetensors dtype -> bytes per element
SAFETENSORS_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
FLOAT_DTYPES = {"F8_E5M2", "F8_E4M3", "F16", "BF16", "F32", "F64"}
INT_DTYPES = {"U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64"}
NPY_MAGIC = b"\x93NUMPY"
NPY_MAX_HEADER = 10_000  # numpy's own default: np.load in the worker refuses longer headers
MAX_JSON_DEPTH = 8  # a valid header nests 4 deep ({name: {shape: [..]}}); metadata is flat
SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library's cap (and the worker's sniff)
MAX_DIM = 2**53  # shapes and offsets beyond this cannot be real


class HeaderError(ValueError):
    """The header is malformed; the message says where."""


def _json_depth(raw: bytes) -> int:
    """Maximum nesting of [ and { outside strings (a linear scan, no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_DIM


def _entry(name: str, info: Any) -> tuple[str, list[int], int, int]:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise HeaderError(f"tensor {name!r}: entry needs exactly dtype, shape, data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise HeaderError(f"tensor {name!r}: unsupported dtype {str(dtype)[:40]!r}")
    if not isinstance(shape, list) or len(shape) > 16 or not all(_is_int(d) for d in shape):
        raise HeaderError(f"tensor {name!r}: shape must be a list of at most 16 non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise HeaderError(f"tensor {name!r}: data_offsets must be [begin, end], 0 <= begin <= end")
    begin, end = offsets
    if begin > end:
        raise HeaderError(f"tensor {name!r}: data_offsets must be [begin, end], 0 <= begin <= end")
    if end - begin != math.prod(shape) * SAFETENSORS_DTYPES[dtype]:
        raise HeaderError(
            f"tensor {name!r}: {end - begin} data bytes do not match dtype {dtype} x shape {shape}"
        )
    return dtype, shape, begin, end


def header_length(head: bytes, max_header_bytes: int) -> int:
    """The header length from a safetensors file's first 8 bytes (HeaderError if implausible)."""
    if len(head) < 8:
        raise HeaderError("file is shorter than the 8-byte safetensors header length")
    (n,) = struct.unpack("<Q", head[:8])
    cap = min(max_header_bytes, SAFETENSORS_MAX_HEADER)
    if n < 2 or n > cap:
        raise HeaderError(f"header length {n} is outside 2..{cap} bytes")
    return n


def _load_json(raw: bytes) -> dict[str, Any]:
    if raw[:1] != b"{":
        raise HeaderError("header must start with '{' (as the safetensors library writes it)")
    if _json_depth(raw) > MAX_JSON_DEPTH:
        raise HeaderError(f"header JSON nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise HeaderError(f"header is not UTF-8 JSON ({str(e)[:200]})") from None
    if not isinstance(header, dict):
        raise HeaderError("header is not a JSON object")
    return header


def parse_safetensors_header(raw: bytes, data_len: int | None) -> dict[str, Any]:
    """The checked header of a file whose header JSON is `raw` and data section `data_len`
    bytes (None: not known yet, e.g. mid-upload): {"tensors": {name: {dtype, shape, begin,
    end}}, "metadata": {str: str}}."""
    header = _load_json(raw)
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise HeaderError("__metadata__ must map strings to strings")
    tensors: dict[str, dict[str, Any]] = {}
    for name, info in header.items():
        dtype, shape, begin, end = _entry(name, info)
        tensors[name] = {"dtype": dtype, "shape": shape, "begin": begin, "end": end}
    pos = 0
    for name, t in sorted(tensors.items(), key=lambda kv: (kv[1]["begin"], kv[1]["end"])):
        if t["begin"] != pos:
            raise HeaderError(f"tensor {name!r}: data does not start where the previous ends")
        pos = t["end"]
    if data_len is not None and pos != data_len:
        raise HeaderError(f"tensors cover {pos} bytes but the data section has {data_len}")
    return {"tensors": tensors, "metadata": meta}


def read_safetensors_header(path: Path, max_header_bytes: int) -> dict[str, Any]:
    """The tensor table {"tensors": {name: {dtype, shape}}, "spans": {name: (start, end) file
    offsets}, "num_tensors", "num_parameters", "metadata"} of a safetensors file; raises
    HeaderError when the file is not valid."""
    size = path.stat().st_size
    with path.open("rb") as f:
        n = header_length(f.read(8), max_header_bytes)
        if 8 + n > size:
            raise HeaderError(f"header length {n} runs past the end of the {size}-byte file")
        raw = f.read(n)
    parsed = parse_safetensors_header(raw, size - 8 - n)
    tensors = {k: {"dtype": v["dtype"], "shape": v["shape"]} for k, v in parsed["tensors"].items()}
    return {
        "tensors": tensors,
        "spans": {k: (8 + n + v["begin"], 8 + n + v["end"]) for k, v in parsed["tensors"].items()},
        "num_tensors": len(tensors),
        "num_parameters": sum(math.prod(t["shape"]) for t in tensors.values()),
        "metadata": parsed["metadata"],
    }


def read_npy_header(f: IO[bytes]) -> dict[str, Any]:
    """{"dtype": descr, "shape": [...], "header_bytes", "data_bytes"} of a .npy stream, read
    with numpy's bounded header parser; refuses object/structured dtypes."""
    magic = f.read(8)
    if len(magic) < 8 or magic[:6] != NPY_MAGIC:
        raise HeaderError("not a .npy array (bad magic)")
    major = magic[6]
    if major not in (1, 2, 3):
        raise HeaderError(f"unsupported .npy format version {major}")
    length_size = 2 if major == 1 else 4
    raw_len = f.read(length_size)
    if len(raw_len) < length_size:
        raise HeaderError(".npy header is truncated")
    (hlen,) = struct.unpack("<H" if major == 1 else "<I", raw_len)
    if hlen > NPY_MAX_HEADER:
        raise HeaderError(f".npy header is {hlen} bytes (at most {NPY_MAX_HEADER})")
    body = f.read(hlen)
    if len(body) < hlen:
        raise HeaderError(".npy header is truncated")
    return _npy_dict(magic + raw_len + body, 8 + length_size + hlen)


def _npy_dict(header: bytes, header_bytes: int) -> dict[str, Any]:
    fp = io.BytesIO(header)
    try:
        fmt = np.lib.format
        read = fmt.read_array_header_1_0 if fmt.read_magic(fp) == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read(fp, max_header_size=NPY_MAX_HEADER)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        raise HeaderError(f".npy header is not a valid literal dict ({str(e)[:200]})") from None
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise HeaderError("object and structured .npy dtypes are not accepted")
    if dtype.kind not in ("b", "i", "u", "f"):
        raise HeaderError(f".npy dtype {dtype.str!r} is not accepted (numbers only)")
    if len(shape) > 16 or not all(0 <= d <= MAX_DIM for d in shape):
        raise HeaderError(".npy shape must be at most 16 non-negative integers")
    return {
        "dtype": dtype.str,
        "shape": [int(d) for d in shape],
        "fortran_order": bool(fortran),
        "header_bytes": header_bytes,
        "data_bytes": math.prod(shape) * dtype.itemsize,
    }
