"""Hostile, malformed and edge inputs for the API, as data: each builds one file or body.

Shared by tests/api/test_hostile_inputs.py (in process) and bench/hostile.py (a live
instance). Written without torch: safetensors, .npy, zip, tar and PNG bytes by hand.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zipfile
import zlib
from math import prod

from svc_fixtures import (
    TINY_CONFIG,
    checkpoint_tensors,
    dataset_bytes,
    npy_bytes,
    npz_bytes,
    png_bytes,
    safetensors_bytes,
    tar_bytes,
    zip_bytes,
)


def raw_safetensors(header_json: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header_json)) + header_json + data


def with_values(dtype: str, shape: list[int], raw: bytes, name: str = "visual.proj") -> bytes:
    """A one-tensor safetensors file whose data is `raw` (e.g. holding a NaN)."""
    header = json.dumps({name: {"dtype": dtype, "shape": shape, "data_offsets": [0, len(raw)]}}).encode()
    return raw_safetensors(header + b" " * (-len(header) % 8), raw)


def checkpoint_with(bad: bytes, dtype: str = "F32") -> bytes:
    """A valid tiny checkpoint table whose visual.proj holds `bad` at its first element."""
    good = safetensors_bytes(checkpoint_tensors())
    n = struct.unpack("<Q", good[:8])[0]
    header = json.loads(good[8 : 8 + n])
    start = 8 + n + header["visual.proj"]["data_offsets"][0]
    return good[:start] + bad + good[start + len(bad) :]


def npz_raw(members: dict[str, bytes], compress: bool = False) -> bytes:
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def npy_header_only(descr: str, shape: tuple[int, ...]) -> bytes:
    full = npy_bytes(descr, shape)
    return full[: len(full) - prod(shape) * int(descr[2:])]


def npy_long_expression(size: int = 200_000) -> bytes:
    header = ("{'descr': '<f4', 'fortran_order': False, 'shape': (" + "1+" * (size // 2) + "1,)}").encode()
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", len(header)) + header


def zip_bomb(uncompressed: int = 8 << 20) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.png", bytes(uncompressed))
    return buf.getvalue()


def zip_with_symlink() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ok.png", png_bytes())
        info = zipfile.ZipInfo("link.png")
        info.external_attr = (0o120777 << 16)  # a symbolic link
        z.writestr(info, "/etc/passwd")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels (no pixel data): a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(1024))  # the start of the rows; a real bomb goes on for gigabytes
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def tar_cut(images: int = 20, keep: int = 3) -> bytes:
    """A tar of `images` PNGs cut after `keep` members, at a block boundary (no end block)."""
    data = tar_bytes([f"{i}.png" for i in range(images)])
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        members = t.getmembers()
    end = members[keep].offset  # the header of member `keep` starts here
    return data[:end]


def nested_header(depth: int = 100_000) -> bytes:
    return raw_safetensors(b"{\"a\":" + b"[" * depth + b"]" * depth + b"}")


# purpose, filename, bytes -> expected (status, code)
UPLOADS: dict[str, tuple[str, str, bytes, int, str]] = {
    "header nested 100k deep": ("checkpoint", "x.safetensors", nested_header(), 400, "invalid_safetensors"),
    "dtype not a string": ("checkpoint", "x.safetensors", raw_safetensors(
        b'{"a":{"dtype":["F32"],"shape":[1],"data_offsets":[0,4]}}', bytes(4)), 400, "invalid_safetensors"),
    "shape of floats": ("checkpoint", "x.safetensors", raw_safetensors(
        b'{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}', bytes(4)), 400, "invalid_safetensors"),
    "header with leading space": ("checkpoint", "x.safetensors", raw_safetensors(
        b' {"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', bytes(4)), 400, "invalid_safetensors"),
    "NaN in a checkpoint": ("checkpoint", "x.safetensors", checkpoint_with(struct.pack("<f", float("nan"))),
                            400, "non_finite_values"),
    "Inf in a checkpoint": ("checkpoint", "x.safetensors", checkpoint_with(struct.pack("<f", float("inf"))),
                            400, "non_finite_values"),
    "BF16 Inf": ("checkpoint", "x.safetensors", with_values("BF16", [2], b"\x00\x00\x80\x7f"), 400,
                 "non_finite_values"),
    "F16 NaN": ("checkpoint", "x.safetensors", with_values("F16", [2], b"\x00\x00\x00\x7e"), 400,
                "non_finite_values"),
    "float8 checkpoint": ("checkpoint", "x.safetensors", with_values("F8_E4M3", [4], bytes(4)), 400,
                          "unsupported_dtype"),
    "NaN in dataset images": ("dataset", "d.safetensors", with_values(
        "F32", [1, 3, 1, 1], struct.pack("<3f", 0, float("nan"), 0), "images"), 400, "non_finite_values"),
    "integer images": ("dataset", "d.safetensors", safetensors_bytes({"images": ("U8", [2, 3, 4, 4])}),
                       400, "invalid_dataset"),
    "negative eval labels": ("eval", "e.npz", npz_raw({
        "images.npy": npy_bytes("<f4", (2, 3, 4, 4)),
        "labels.npy": npy_bytes("<i8", (2,))[:-16] + struct.pack("<2q", 0, -1)}), 400, "invalid_eval_data"),
    "npy 200 KB expression": ("dataset", "d.npz", npz_raw({"images.npy": npy_long_expression()}), 400,
                              "invalid_npz"),
    "header-only npz": ("dataset", "d.npz", npz_raw({"images.npy": npy_header_only("<f4", (4, 3, 8, 8))}),
                        400, "invalid_npz"),
    "npz with a non-array member": ("dataset", "d.npz", npz_raw({
        "images.npy": npy_bytes("<f4", (1, 3, 4, 4)), "notes.txt": b"hi"}), 400, "invalid_npz"),
    "object npz": ("dataset", "d.npz", npz_bytes({"images": ("|O", (2, 3, 4, 4))}), 400, "invalid_npz"),
    "NaN in npz images": ("dataset", "d.npz", npz_raw({"images.npy": npy_bytes("<f4", (1, 3, 1, 1))[:-12]
                          + struct.pack("<3f", 0, float("inf"), 0)}), 400, "non_finite_values"),
    "zip bomb": ("dataset", "d.zip", zip_bomb(), 400, "archive_bomb"),
    "50000x50000 PNG": ("dataset", "d.zip", zip_of({"big.png": png_header_only(50_000, 50_000)}), 400,
                        "image_too_large"),
    "PNG that is not one": ("dataset", "d.zip", zip_of({"a.png": b"\x89PNG\r\n\x1a\nnope"}), 400,
                            "invalid_image"),
    "GIF named .png": ("dataset", "d.zip", zip_of({"a.png": b"GIF89a" + bytes(40)}), 400, "invalid_image"),
    "zip symlink member": ("dataset", "d.zip", zip_with_symlink(), 400, "unsafe_archive"),
    "tar symlink member": ("dataset", "d.tar", tar_bytes(["a.png"], symlink="b.png"), 400, "unsafe_archive"),
    "tar cut at a block boundary": ("dataset", "d.tar", tar_cut(), 400, "truncated_archive"),
    "tar cut mid-member": ("dataset", "d.tar", tar_bytes(["a.png", "b.png"])[:700], 400, "truncated_archive"),
    "only hidden images": ("dataset", "d.zip", zip_bytes([".a.png", "__MACOSX/b.png"]), 400,
                           "invalid_dataset"),
    "traversal": ("dataset", "d.zip", zip_bytes(["../../x.png"]), 400, "unsafe_archive"),
    "label CSV with a third column": ("eval", "l.csv", b"a.png,0,x\n", 400, "invalid_eval_data"),
    "label CSV for a dataset": ("dataset", "l.csv", b"a.png,0\n", 400, "unsupported_file_type"),
    "pickle as .safetensors": ("checkpoint", "x.safetensors", b"\x80\x04\x95" + bytes(40), 400,
                               "unsupported_checkpoint_format"),
    "pickle by name": ("checkpoint", "x.pt", b"\x80\x04", 400, "unsupported_checkpoint_format"),
    "empty file": ("checkpoint", "x.safetensors", b"", 400, "invalid_safetensors"),
}  # fmt: skip

VALID_UPLOADS: dict[str, tuple[str, str, bytes]] = {
    "checkpoint": ("checkpoint", "base.safetensors", safetensors_bytes(checkpoint_tensors())),
    "tensor dataset": ("dataset", "d.safetensors", dataset_bytes()),
    "image zip": ("dataset", "d.zip", zip_bytes(["a/1.png", "b/2.png"])),
    "image tar": ("dataset", "d.tar", tar_bytes(["1.png", "2.png"])),
    "eval zip": ("eval", "e.zip", zip_bytes(["0/a.png", "1/b.png"])),
}

# option overrides of a valid body -> expected (status, code)
BAD_OPTIONS: dict[str, tuple[dict[str, object], int, str]] = {
    "lr NaN": ({"options": {"epochs": 2, "num_sequential": 1, "lr": float("nan")}}, 422, "invalid_request"),
    "lr negative": ({"options": {"epochs": 2, "num_sequential": 1, "lr": -1.0}}, 422, "invalid_request"),
    "lr Infinity": ({"options": {"num_sequential": 1, "lr": float("inf")}}, 422, "invalid_request"),
    "empty lambda_grid": ({"options": {"num_sequential": 1, "base_lambda": "auto", "lambda_grid": []}}, 422,
                          "invalid_request"),
    "empty lr_grid": ({"options": {"num_sequential": 1, "lr_grid": []}}, 422, "invalid_request"),
    "zero in lr_grid": ({"options": {"num_sequential": 1, "lr_grid": [0.0]}}, 422, "invalid_request"),
    "empty scaling_grid": ({"method": "task_arithmetic", "options": {"scaling_grid": []}}, 422,
                           "invalid_request"),
    "epochs 10^12": ({"options": {"num_sequential": 1, "epochs": 10**12}}, 422, "invalid_request"),
    "NaN in the custom config": ({"model": "NAN_CONFIG"}, 400, "invalid_model_config"),
    "arch is a path": ({"model": "PATH_ARCH"}, 400, "invalid_model_config"),
    "unknown built-in": ({"model": "UNKNOWN_ARCH"}, 400, "unknown_architecture"),
    "custom config named like a built-in": ({"model": "BUILTIN_NAME"}, 400, "invalid_model_config"),
    "custom config with an unknown key": ({"model": "EXTRA_KEY"}, 400, "invalid_model_config"),
    "hf text tower": ({"model": "HF_TEXT"}, 400, "invalid_model_config"),
    "small vocabulary with class names": ({"model": "SMALL_VOCAB"}, 400, "invalid_model_config"),
    "template with {0}{1}": ({"templates": ["a {0} {1}"]}, 422, "invalid_request"),
    "template with {x}": ({"templates": ["a {} {x}"]}, 422, "invalid_request"),
    "65 templates": ({"templates": ["a {}."] * 65}, 422, "invalid_request"),
    "long metadata value": ({"metadata": {"k": "v" * 600}}, 422, "invalid_request"),
    "17 metadata keys": ({"metadata": {f"k{i}": "v" for i in range(17)}}, 422, "invalid_request"),
    "NUL in a file id": ({"base": "file-\x00"}, 422, "invalid_request"),
    "seed 2^64": ({"seed": 2**64}, 422, "invalid_request"),
}  # fmt: skip


def _model_variant(name: str, base: str) -> dict[str, object]:
    cfg = json.loads(json.dumps(TINY_CONFIG))
    model: dict[str, object] = {"arch": "calm-svc-tiny", "custom_config": cfg, "checkpoint": base}
    if name == "NAN_CONFIG":
        cfg["vision_cfg"]["mlp_ratio"] = float("nan")
    elif name == "PATH_ARCH":
        model = {"arch": "../../../../etc/calm/some-config", "checkpoint": base}
    elif name == "UNKNOWN_ARCH":
        model = {"arch": "ViT-Q-99", "checkpoint": base}
    elif name == "BUILTIN_NAME":
        model["arch"] = "ViT-B-32"
    elif name == "EXTRA_KEY":
        cfg["vision_cfg"]["timm_model_name"] = "vit_base_patch16_224"
    elif name == "HF_TEXT":
        cfg["text_cfg"]["hf_tokenizer_name"] = "bert-base-uncased"
    elif name == "SMALL_VOCAB":
        cfg["text_cfg"]["vocab_size"] = 64
    return model


def apply_override(body: dict[str, object], override: dict[str, object]) -> dict[str, object]:
    """A copy of a valid merge body with one hostile change (see BAD_OPTIONS)."""
    out = json.loads(json.dumps(body))
    for key, value in override.items():
        if key == "model":
            out["model"] = _model_variant(str(value), out["model"]["checkpoint"])  # type: ignore[index]
        elif key == "templates":
            out["tasks"][0]["templates"] = value  # type: ignore[index]
        elif key == "base":
            out["model"]["checkpoint"] = value  # type: ignore[index]
        else:
            out[key] = value
    return out
