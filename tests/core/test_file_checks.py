"""Upload validation without torch: safetensors headers, .npz/.npy headers, archives, pickles."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
from svc_fixtures import (
    checkpoint_tensors,
    npz_bytes,
    safetensors_bytes,
    tar_bytes,
    zip_bytes,
)

from core.file_checks import FileCheckError, Limits, check_file, format_for


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def code_of(path: Path, fmt: str, purpose: str, limits: Limits | None = None) -> str:
    with pytest.raises(FileCheckError) as e:
        check_file(path, fmt, purpose, limits)
    return e.value.code


def raw_safetensors(header: object, data: bytes = b"", length: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def test_checkpoint_tensor_table(tmp_path: Path) -> None:
    meta = check_file(
        write(tmp_path, "c.safetensors", safetensors_bytes(checkpoint_tensors())), "safetensors", "checkpoint"
    )
    assert meta["num_tensors"] == 5
    assert meta["tensors"]["visual.proj"] == {"dtype": "F32", "shape": [16, 32]}
    assert meta["num_parameters"] == 16 * 3 * 16 + 16 + 2 * 16 * 32 + 1


F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
MALFORMED = {
    "short_file": b"\x01\x00",
    "length_past_end": raw_safetensors({"a": F32x2}, bytes(8), length=10_000),
    "length_too_big": struct.pack("<Q", 2**62) + b"{}",
    "not_json": struct.pack("<Q", 4) + b"\xff\xfe{}",
    "json_array": raw_safetensors([1, 2]),
    "bad_dtype": raw_safetensors({"a": {**F32x2, "dtype": "F128"}}, bytes(8)),
    "negative_dim": raw_safetensors({"a": {**F32x2, "shape": [-2]}}, bytes(8)),
    "size_mismatch": raw_safetensors({"a": {**F32x2, "shape": [3]}}, bytes(8)),
    "offsets_reversed": raw_safetensors({"a": {**F32x2, "data_offsets": [8, 0]}}, bytes(8)),
    "extra_key": raw_safetensors({"a": {**F32x2, "foo": 1}}, bytes(8)),
    "gap": raw_safetensors({"a": {**F32x2, "data_offsets": [4, 12]}}, bytes(12)),
    "overlap": raw_safetensors({"a": F32x2, "b": {**F32x2, "data_offsets": [4, 12]}}, bytes(16)),
    "trailing_data": raw_safetensors({"a": F32x2}, bytes(12)),
    "data_truncated": raw_safetensors({"a": {**F32x2, "shape": [4], "data_offsets": [0, 16]}}, bytes(8)),
    "metadata_not_strings": raw_safetensors({"__metadata__": {"x": 1}, "a": F32x2}, bytes(8)),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_safetensors_headers(tmp_path: Path, case: str) -> None:
    path = write(tmp_path, "m.safetensors", MALFORMED[case])
    assert code_of(path, "safetensors", "checkpoint") == "invalid_safetensors"


def test_pickles_are_refused_with_a_conversion_hint(tmp_path: Path) -> None:
    with pytest.raises(FileCheckError) as e:
        format_for("model.pt", "checkpoint")
    assert e.value.code == "unsupported_checkpoint_format"
    assert "calm-merge convert in.pt out.safetensors" in e.value.message
    # A pickle renamed to .safetensors is recognised as such, and still never unpickled.
    path = write(tmp_path, "sneaky.safetensors", pickle.dumps({"w": [1.0, 2.0]}, protocol=4))
    assert code_of(path, "safetensors", "checkpoint") == "unsupported_checkpoint_format"
    torch_zip = tmp_path / "zipped.safetensors"
    with zipfile.ZipFile(torch_zip, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({}))
    assert code_of(torch_zip, "safetensors", "checkpoint") == "unsupported_checkpoint_format"


@pytest.mark.parametrize(
    ("name", "purpose", "code"),
    [
        ("x.exe", "checkpoint", "unsupported_file_type"),
        ("data.zip", "checkpoint", "unsupported_file_type"),
        ("head.npz", "head", "unsupported_file_type"),
        ("weights.bin", "checkpoint", "unsupported_checkpoint_format"),
    ],
)
def test_format_for_name_and_purpose(name: str, purpose: str, code: str) -> None:
    with pytest.raises(FileCheckError) as e:
        format_for(name, purpose)
    assert e.value.code == code
    assert format_for("Images.ZIP", "dataset") == "zip"


def test_checkpoint_needs_float_tensors(tmp_path: Path) -> None:
    path = write(tmp_path, "i.safetensors", safetensors_bytes({"ids": ("I64", [4])}))
    assert code_of(path, "safetensors", "checkpoint") == "invalid_checkpoint"


def test_head_files(tmp_path: Path) -> None:
    ok = write(tmp_path, "h.safetensors", safetensors_bytes({"weight": ("F32", [10, 32])}))
    assert check_file(ok, "safetensors", "head") == {"classes": 10, "embed_dim": 32, "dtype": "F32"}
    for i, table in enumerate(
        [{"w": ("F32", [10, 32])}, {"weight": ("F32", [32])}, {"weight": ("I32", [2, 3])}]
    ):
        bad = write(tmp_path, f"b{i}.safetensors", safetensors_bytes(table))  # type: ignore[arg-type]
        assert code_of(bad, "safetensors", "head") == "invalid_head"


def test_tensor_datasets_and_eval_sets(tmp_path: Path) -> None:
    images = {"images": ("F32", [6, 3, 16, 16])}
    ds = write(tmp_path, "d.safetensors", safetensors_bytes(images))
    assert check_file(ds, "safetensors", "dataset") == {"images": 6, "image_shape": [3, 16, 16]}
    assert code_of(ds, "safetensors", "eval") == "invalid_eval_data"  # no labels
    ev = write(tmp_path, "e.safetensors", safetensors_bytes({**images, "labels": ("I64", [6])}))
    assert check_file(ev, "safetensors", "eval")["images"] == 6
    wrong = write(tmp_path, "w.safetensors", safetensors_bytes({**images, "labels": ("F32", [6])}))
    assert code_of(wrong, "safetensors", "eval") == "invalid_eval_data"
    gray = write(tmp_path, "g.safetensors", safetensors_bytes({"images": ("F32", [6, 1, 16, 16])}))
    assert code_of(gray, "safetensors", "dataset") == "invalid_dataset"


def test_npz_headers_without_loading(tmp_path: Path) -> None:
    ok = write(tmp_path, "ok.npz", npz_bytes({"images": ("<f4", (5, 3, 8, 8)), "labels": ("<i8", (5,))}))
    assert check_file(ok, "npz", "eval") == {"images": 5, "image_shape": [3, 8, 8], "classes": 1}
    objects = write(tmp_path, "o.npz", npz_bytes({"images": ("|O", (5, 3, 8, 8))}))
    assert code_of(objects, "npz", "dataset") == "invalid_npz"
    missing = write(tmp_path, "m.npz", npz_bytes({"pixels": ("<f4", (5, 3, 8, 8))}))
    assert code_of(missing, "npz", "dataset") == "invalid_dataset"
    structured = tmp_path / "s.npz"
    header = repr({"descr": [("a", "<f4")], "fortran_order": False, "shape": (2,)}).encode()
    with zipfile.ZipFile(structured, "w") as z:
        z.writestr("images.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header)
    assert code_of(structured, "npz", "dataset") == "invalid_npz"
    assert code_of(write(tmp_path, "junk.npz", b"not a zip"), "npz", "dataset") == "invalid_npz"


def test_image_archives(tmp_path: Path) -> None:
    names = ["imgs/a.png", "imgs/b.JPG", "imgs/c.webp", "readme.txt"]
    want = {"images": 3, "skipped": 1, "note": "skipped 1 file that is not an image or hidden: readme.txt"}
    assert check_file(write(tmp_path, "d.zip", zip_bytes(names)), "zip", "dataset") == want
    assert check_file(write(tmp_path, "d.tar", tar_bytes(names)), "tar", "dataset") == want
    empty = write(tmp_path, "e.zip", zip_bytes(["readme.txt"]))
    assert code_of(empty, "zip", "dataset") == "invalid_dataset"
    assert code_of(write(tmp_path, "bad.zip", b"PK\x03\x04garbage"), "zip", "dataset") == "invalid_archive"
    assert code_of(write(tmp_path, "bad.tar", b"x" * 1000), "tar", "dataset") == "invalid_archive"


@pytest.mark.parametrize("evil", ["../evil.png", "/etc/evil.png", "a/../../evil.png", "C:/evil.png"])
def test_archive_traversal_is_refused(tmp_path: Path, evil: str) -> None:
    assert (
        code_of(write(tmp_path, "t.zip", zip_bytes(["ok.png", evil])), "zip", "dataset") == "unsafe_archive"
    )
    assert (
        code_of(write(tmp_path, "t.tar", tar_bytes(["ok.png", evil])), "tar", "dataset") == "unsafe_archive"
    )


def test_tar_links_and_member_cap(tmp_path: Path) -> None:
    linked = write(tmp_path, "l.tar", tar_bytes(["a.png"], symlink="link.png"))
    assert code_of(linked, "tar", "dataset") == "unsafe_archive"
    many = [f"{i}.png" for i in range(5)]
    small = Limits(max_members=4)
    assert code_of(write(tmp_path, "m.zip", zip_bytes(many)), "zip", "dataset", small) == "too_many_members"
    assert code_of(write(tmp_path, "m.tar", tar_bytes(many)), "tar", "dataset", small) == "too_many_members"


def test_eval_archives_keep_what_labelling_needs(tmp_path: Path) -> None:
    """Class folders (indices or names) and flat sets are all accepted on upload; their labels are
    resolved against the task's classes when a job uses them (core.job_validation.check_eval)."""
    names = ["set/0/a.png", "set/0/b.png", "set/1/c.png", "set/2/d.jpg"]
    ok = write(tmp_path, "e.zip", zip_bytes(names))
    assert check_file(ok, "zip", "eval") == {"images": 4, "classes": 3, "folders": ["0", "1", "2"],
                                             "image_names": names}
    mixed = write(tmp_path, "f.tar", tar_bytes(["b.webp", "even/a.BMP", "notes.txt", ".hidden.png"]))
    meta = check_file(mixed, "tar", "eval")
    assert meta["folders"] == ["", "even"] and "classes" not in meta and meta["images"] == 2
    assert meta["skipped"] == 2
    assert meta["note"] == "skipped 2 files that are not an image or hidden: .hidden.png, notes.txt"


def test_label_csv(tmp_path: Path) -> None:
    ok = write(tmp_path, "l.csv", b"\xef\xbb\xbffilename,label\r\na.png,0\r\nb/c.png,even\r\n")
    assert format_for("labels.CSV", "eval") == "csv"
    assert check_file(ok, "csv", "eval") == {"rows": 2, "labels": {"a.png": "0", "b/c.png": "even"}}
    for bad in (b"a.png,0,extra\n", b"a.png,0\na.png,1\n", b"\xff\xfe", b"", b"../x.png,1\n"):
        assert code_of(write(tmp_path, "b.csv", bad), "csv", "eval") == "invalid_eval_data"
    assert code_of(ok, "csv", "eval", Limits(max_csv_bytes=10)) == "invalid_eval_data"
    with pytest.raises(FileCheckError) as e:
        format_for("labels.csv", "dataset")
    assert e.value.code == "unsupported_file_type"
