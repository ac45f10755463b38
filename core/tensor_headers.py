"""Read tensor tables from file headers without loading tensors (and without torch or numpy).

- safetensors: 8-byte little-endian header length, then a JSON object name -> {dtype, shape,
  data_offsets}; every field is bounds- and consistency-checked the way the safetensors library
  does (offsets tile the data section exactly, sizes match dtype x shape).
- .npy (inside .npz): magic, version, then a Python-literal dict parsed with ast.literal_eval
  (literals only, never pickle); object and structured dtypes are refused.
"""

from __future__ import annotations

import ast
import json
import math
import struct
from pathlib import Path
from typing import IO, Any

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


class HeaderError(ValueError):
    """The header is malformed; the message says where."""


def _shape(name: str, value: Any) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise HeaderError(f"tensor {name!r}: shape must be a list of non-negative integers")
    return value


def _entry(name: str, info: Any) -> tuple[str, list[int], int, int]:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise HeaderError(f"tensor {name!r}: entry needs exactly dtype, shape, data_offsets")
    dtype = info["dtype"]
    if dtype not in SAFETENSORS_DTYPES:
        raise HeaderError(f"tensor {name!r}: unsupported dtype {dtype!r}")
    shape = _shape(name, info["shape"])
    offsets = info["data_offsets"]
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise HeaderError(f"tensor {name!r}: data_offsets must be [begin, end], 0 <= begin <= end")
    begin, end = offsets
    if end - begin != math.prod(shape) * SAFETENSORS_DTYPES[dtype]:
        raise HeaderError(
            f"tensor {name!r}: {end - begin} data bytes do not match dtype {dtype} x shape {shape}"
        )
    return dtype, shape, begin, end


def read_safetensors_header(path: Path, max_header_bytes: int) -> dict[str, Any]:
    """The tensor table {"tensors": {name: {dtype, shape}}, "num_tensors", "num_parameters",
    "metadata"} of a safetensors file; raises HeaderError when the file is not valid."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise HeaderError("file is shorter than the 8-byte safetensors header length")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > max_header_bytes:
            raise HeaderError(f"header length {n} is outside 2..{max_header_bytes} bytes")
        if 8 + n > size:
            raise HeaderError(f"header length {n} runs past the end of the {size}-byte file")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HeaderError(f"header is not UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise HeaderError("header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise HeaderError("__metadata__ must map strings to strings")
    tensors: dict[str, dict[str, Any]] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        dtype, shape, begin, end = _entry(name, info)
        tensors[name] = {"dtype": dtype, "shape": shape}
        spans.append((begin, end, name))
    data_len = size - 8 - n
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            raise HeaderError(f"tensor {name!r}: data does not start where the previous ends")
        pos = end
    if pos != data_len:
        raise HeaderError(f"tensors cover {pos} bytes but the data section has {data_len}")
    return {
        "tensors": tensors,
        "num_tensors": len(tensors),
        "num_parameters": sum(math.prod(t["shape"]) for t in tensors.values()),
        "metadata": meta,
    }


def read_npy_header(f: IO[bytes]) -> dict[str, Any]:
    """{"dtype": descr, "shape": [...]} of a .npy stream; refuses object/structured dtypes."""
    magic = f.read(8)
    if len(magic) < 8 or magic[:6] != NPY_MAGIC:
        raise HeaderError("not a .npy array (bad magic)")
    major = magic[6]
    if major == 1:
        (hlen,) = struct.unpack("<H", f.read(2))
    elif major in (2, 3):
        (hlen,) = struct.unpack("<I", f.read(4))
    else:
        raise HeaderError(f"unsupported .npy format version {major}")
    if hlen > 1 << 20:
        raise HeaderError(".npy header is too long")
    text = f.read(hlen).decode("latin-1")
    try:
        header = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise HeaderError(".npy header is not a literal dict") from None
    if not isinstance(header, dict) or not {"descr", "shape"} <= set(header):
        raise HeaderError(".npy header lacks descr/shape")
    descr, shape = header["descr"], header["shape"]
    if not isinstance(descr, str):
        raise HeaderError("structured .npy dtypes are not accepted")
    if descr.lstrip("<>|=")[:1] not in ("b", "i", "u", "f"):
        raise HeaderError(f".npy dtype {descr!r} is not accepted (object arrays are refused)")
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise HeaderError(".npy shape must be a tuple of non-negative integers")
    return {"dtype": descr, "shape": list(shape)}
