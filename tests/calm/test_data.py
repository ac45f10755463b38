"""Image inputs from folders / zip / tar and tensor files; caps and path-traversal safety."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from calm.data import DataLimits, Labelling, describe_data, load_images, load_labelled
from calm.errors import DataError


def _png(seed: int, size: tuple[int, int] = (20, 24), fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


# member name -> bytes; deliberately unsorted, with non-image and hidden members
FILES = {
    "1/b.png": _png(2),
    "0/a.png": _png(1),
    "0/c.jpg": _png(3, fmt="JPEG"),
    "1/readme.txt": b"not an image",
    "__MACOSX/0/._a.png": b"resource fork",
}
ORDER = ["0/a.png", "0/c.jpg", "1/b.png"]


def _write_dir(root: Path) -> Path:
    for name, data in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _write_zip(path: Path, files: dict[str, bytes] = FILES) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _write_tar(path: Path, files: dict[str, bytes] = FILES, mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _expected(preprocess) -> torch.Tensor:
    return torch.stack([preprocess(Image.open(io.BytesIO(FILES[n])).convert("RGB")) for n in ORDER])


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    return {
        "dir": _write_dir(tmp_path / "images"),
        "zip": _write_zip(tmp_path / "images.zip"),
        "tar.gz": _write_tar(tmp_path / "images.tar.gz"),
        "tar": _write_tar(tmp_path / "images.tar", mode="w"),
        "no-extension zip": _write_zip(tmp_path / "upload-1234"),
    }


@pytest.mark.parametrize("kind", ["dir", "zip", "tar.gz", "tar", "no-extension zip"])
def test_image_sources_equal_tensor_file(kind: str, sources: dict, tiny_preprocess,
                                         tmp_path: Path) -> None:
    want = _expected(tiny_preprocess)
    host = load_images(sources[kind], tiny_preprocess)
    assert host.shape == (3, 3, 16, 16) and host.data.dtype == torch.uint8  # compact on the host
    got = host.materialize()
    assert got.dtype == torch.float32 and torch.equal(got, want)  # bitwise the full transform
    assert torch.equal(host.batch(torch.tensor([2, 0]), torch.device("cpu")), want[[2, 0]])
    save_file({"images": want}, str(tmp_path / "t.safetensors"))
    np.savez(tmp_path / "t.npz", images=want.numpy())
    assert torch.equal(load_images(tmp_path / "t.safetensors", tiny_preprocess).materialize(), got)
    assert torch.equal(load_images(tmp_path / "t.npz", tiny_preprocess).materialize(), got)


@pytest.mark.parametrize("kind", ["dir", "zip", "tar.gz"])
def test_labelled_from_class_folders(kind: str, sources: dict, tiny_preprocess) -> None:
    images, labels = load_labelled(sources[kind], tiny_preprocess)
    assert torch.equal(images.materialize(), _expected(tiny_preprocess))
    assert labels.tolist() == [0, 0, 1] and labels.dtype == torch.int64
    info = describe_data(sources[kind], tiny_preprocess, labelled=True)
    assert (info.count, info.num_classes) == (3, 2)


def test_labelled_tensor_files(tmp_path: Path, tiny_preprocess, make_image_tensors) -> None:
    path = make_image_tensors("eval", n=6, num_classes=3)
    images, labels = load_labelled(path, tiny_preprocess)
    assert images.shape == (6, 3, 16, 16) and labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert describe_data(path, tiny_preprocess, labelled=True).num_classes == 3
    np.savez(tmp_path / "e.npz", images=images.materialize().numpy(), labels=np.arange(6) % 2)
    assert load_labelled(tmp_path / "e.npz", tiny_preprocess)[1].tolist() == [0, 1, 0, 1, 0, 1]
    with pytest.raises(DataError, match="missing key"):
        load_labelled(make_image_tensors("unlabelled"), tiny_preprocess)
    np.savez(tmp_path / "f.npz", images=images.materialize().numpy(), labels=np.zeros(6) + 0.5)
    with pytest.raises(DataError, match="non-negative integers"):
        load_labelled(tmp_path / "f.npz", tiny_preprocess)


def test_image_outside_class_folder(tmp_path: Path, tiny_preprocess) -> None:
    path = _write_zip(tmp_path / "flat.zip", {"a.png": _png(1), "cats/b.png": _png(2)})
    with pytest.raises(DataError, match=r"1 image\(s\) are not in a class folder \(a.png\).*eval_labels"):
        load_labelled(path, tiny_preprocess)
    path = _write_zip(tmp_path / "named.zip", {"cats/a.png": _png(1), "dogs/b.png": _png(2)})
    with pytest.raises(DataError, match=r"folder\(s\) cats/, dogs/ name no class.*index 0-1"):
        load_labelled(path, tiny_preprocess, labelling=Labelling(num_classes=2))
    with pytest.raises(DataError, match=r"dogs/ name no class.*class name \(cats, birds\) or an index 0-1"):
        load_labelled(path, tiny_preprocess, labelling=Labelling(["cats", "birds"]))
    with pytest.raises(DataError, match=r"folder\(s\) 2/ name no class: .* an index 0-1"):
        load_labelled(_write_zip(tmp_path / "i.zip", {"2/a.png": _png(1)}), tiny_preprocess,
                      labelling=Labelling(num_classes=2))


@pytest.mark.parametrize("kind", ["dir", "zip", "tar"])
def test_class_name_folders(kind: str, tmp_path: Path, tiny_preprocess) -> None:
    """Folders named by the task's classnames, mapped through them (a name wins over an index)."""
    files = {"odd/a.png": _png(1), "even/b.png": _png(2), "even/c.png": _png(3), "odd/notes.txt": b"x"}
    path = {"dir": lambda: _write_files(tmp_path / "e", files),
            "zip": lambda: _write_zip(tmp_path / "e.zip", files),
            "tar": lambda: _write_tar(tmp_path / "e.tar", files)}[kind]()
    how = Labelling(["even", "odd"])
    images, labels = load_labelled(path, tiny_preprocess, labelling=how)
    assert labels.tolist() == [0, 0, 1] and len(images) == 3  # even/b, even/c, odd/a
    info = describe_data(path, tiny_preprocess, labelling=how)
    assert (info.count, info.num_classes) == (3, 2) and "odd/notes.txt" in info.notes[0]
    assert len(load_images(path, tiny_preprocess)) == 3  # unlabeled: any folders
    swapped = _write_zip(tmp_path / "n.zip", {"1/a.png": _png(1), "0/b.png": _png(2)})
    assert load_labelled(swapped, tiny_preprocess, labelling=Labelling(["1", "0"]))[1].tolist() == [1, 0]


def _write_files(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


FLAT = {"img_b.png": _png(2), "img_a.png": _png(1), "img_c.jpg": _png(3, fmt="JPEG"), "img_d.png": _png(4)}


@pytest.mark.parametrize("kind", ["dir", "zip", "tar.gz"])
def test_flat_images_with_a_label_csv(kind: str, tmp_path: Path, tiny_preprocess, caplog) -> None:
    """A flat folder / archive of images plus `filename,label` (index or class name); images
    without a row are left out, with a warning; a row may name a file by its bare name."""
    path = {"dir": lambda: _write_files(tmp_path / "flat", FLAT),
            "zip": lambda: _write_zip(tmp_path / "flat.zip", {f"test/{n}": d for n, d in FLAT.items()}),
            "tar.gz": lambda: _write_tar(tmp_path / "flat.tgz", FLAT)}[kind]()
    csv = tmp_path / "labels.csv"
    csv.write_text("filename,label\nimg_a.png,odd\n./img_b.png,0\nimg_c.jpg,1\n", encoding="utf-8-sig")
    how = Labelling(["even", "odd"], 2, csv)
    with caplog.at_level("WARNING", logger="calm.data"):
        images, labels = load_labelled(path, tiny_preprocess, labelling=how)
    assert labels.tolist() == [1, 0, 1] and len(images) == 3  # sorted by path: a, b, c
    want = _expected_of(tiny_preprocess, [FLAT[n] for n in ("img_a.png", "img_b.png", "img_c.jpg")])
    assert torch.equal(images.materialize(), want)
    assert "1 image(s) have no row in eval_labels" in caplog.text and "img_d.png" in caplog.text
    info = describe_data(path, tiny_preprocess, labelling=how)
    assert (info.count, info.num_classes) == (3, 2) and "img_d.png" in info.notes[-1]


def _expected_of(preprocess, blobs: list[bytes]) -> torch.Tensor:
    return torch.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])


def test_label_csv_errors_say_what_to_fix(tmp_path: Path, tiny_preprocess, make_image_tensors) -> None:
    path = _write_files(tmp_path / "flat", FLAT)
    csv = tmp_path / "labels.csv"
    for text, expected in (
        ("img_a.png,1\nmissing.png,0\n", r"1 labelled file\(s\) are not images of the eval data: missing"),
        ("img_a.png,cat\nimg_b.png,7\n", r"2 label\(s\) name no class: img_a.png: 'cat', img_b.png: '7'; "
                                          r"a label is a class name \(even, odd\) or an index 0-1"),
        ("img_a.png;1\n", r"line 1: expected 2 columns \(filename,label\), got 1"),
        ("img_a.png,1\nimg_a.png,0\n", "line 2: 'img_a.png' is labelled twice"),
        ("../img_a.png,1\n", "must be a path inside"),
        ("filename,label\n", "no rows"),
    ):
        csv.write_text(text)
        with pytest.raises(DataError, match=expected):
            load_labelled(path, tiny_preprocess, labelling=Labelling(["even", "odd"], 2, csv))
    csv.write_bytes(b"img_a.png,\xff\n")
    with pytest.raises(DataError, match="not UTF-8"):
        describe_data(path, tiny_preprocess, labelling=Labelling(None, 2, csv))
    with pytest.raises(DataError, match="eval_labels nope.csv: no such file"):
        load_labelled(path, tiny_preprocess, labelling=Labelling(None, 2, tmp_path / "nope.csv"))
    tensors = make_image_tensors("e", n=4, num_classes=3)
    with pytest.raises(DataError, match="tensor file with its own 'labels'"):
        load_labelled(tensors, tiny_preprocess, labelling=Labelling(None, 3, csv))
    with pytest.raises(DataError, match="labels go up to 2 but the task has 2 classes"):
        describe_data(tensors, tiny_preprocess, labelling=Labelling(num_classes=2))


def test_every_format_pillow_reads_and_skipped_files_are_named(tmp_path: Path, tiny_preprocess,
                                                               caplog) -> None:
    files = {f"0/x.{ext}": _png(i, fmt=fmt) for i, (ext, fmt) in
             enumerate([("webp", "WEBP"), ("bmp", "BMP"), ("gif", "GIF"), ("tif", "TIFF"), ("PNG", "PNG")])}
    webp = Image.open(io.BytesIO(files["0/x.webp"]))
    assert webp.format == "WEBP"
    files |= {"0/notes.txt": b"x", ".DS_Store": b"x", "0/labels.csv": b"a,b"}
    path = _write_files(tmp_path / "mixed", files)
    with caplog.at_level("WARNING", logger="calm.data"):
        images, labels = load_labelled(path, tiny_preprocess)
    assert len(images) == 5 and labels.tolist() == [0] * 5
    assert ("mixed: skipped 3 files that are not an image or hidden: .DS_Store, 0/labels.csv, "
            "0/notes.txt") in caplog.text
    gif = [n for n in sorted(files) if n.endswith(".gif")][0]
    want = _expected_of(tiny_preprocess, [files[gif]])[0]
    assert torch.equal(images.materialize()[sorted(n for n in files if "x." in n).index(gif)], want)


@pytest.mark.parametrize("bad", ["../escape.png", "/abs/escape.png", "ok/../../escape.png"])
@pytest.mark.parametrize("fmt", ["zip", "tar"])
def test_path_traversal_members_refused(tmp_path: Path, tiny_preprocess, bad: str,
                                        fmt: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    files = {"0/a.png": _png(1), bad: _png(2)}
    path = _write_zip(work / "x.zip", files) if fmt == "zip" else _write_tar(work / "x.tar", files)
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(DataError, match="unsafe member name"):
        load_images(path, tiny_preprocess)
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing extracted anywhere
    assert not (tmp_path / "escape.png").exists()


def test_tensor_file_shape_and_dtype_checks(tmp_path: Path, tiny_preprocess) -> None:
    save_file({"images": torch.zeros(2, 3, 32, 32)}, str(tmp_path / "big.safetensors"))
    with pytest.raises(DataError, match=r"big.safetensors: 'images' must be \[N>0, 3, 16, 16\]"):
        load_images(tmp_path / "big.safetensors", tiny_preprocess)
    with pytest.raises(DataError, match="must be"):
        describe_data(tmp_path / "big.safetensors", tiny_preprocess)
    np.savez(tmp_path / "u8.npz", images=np.zeros((2, 3, 16, 16), np.uint8))
    with pytest.raises(DataError, match="must be float"):
        load_images(tmp_path / "u8.npz", tiny_preprocess)
    save_file({"pixels": torch.zeros(2, 3, 16, 16)}, str(tmp_path / "k.safetensors"))
    with pytest.raises(DataError, match="missing key"):
        load_images(tmp_path / "k.safetensors", tiny_preprocess)
    nan = torch.zeros(2, 3, 16, 16)
    nan[0, 0, 0, 0] = float("nan")
    save_file({"images": nan}, str(tmp_path / "nan.safetensors"))
    with pytest.raises(DataError, match="NaN"):
        load_images(tmp_path / "nan.safetensors", tiny_preprocess)


def test_npz_pickle_refused(tmp_path: Path, tiny_preprocess) -> None:
    np.savez(tmp_path / "obj.npz", images=np.array([object()], dtype=object))
    with pytest.raises(DataError, match="obj.npz"):
        load_images(tmp_path / "obj.npz", tiny_preprocess)


def test_caps_and_bad_inputs(tmp_path: Path, tiny_preprocess) -> None:
    path = _write_zip(tmp_path / "x.zip", {"0/a.png": _png(1, size=(300, 300)), "0/b.png": _png(2)})
    with pytest.raises(DataError, match="pixels"):
        load_images(path, tiny_preprocess, limits=DataLimits(max_pixels=100 * 100))
    with pytest.raises(DataError, match="too much image data"):
        load_images(path, tiny_preprocess, limits=DataLimits(max_member_bytes=1000))
    with pytest.raises(DataError, match="2 images, more than the limit of 1 .*`max_images`"):
        load_images(path, tiny_preprocess, limits=DataLimits(max_images=1))
    empty = _write_zip(tmp_path / "empty.zip", {"notes.txt": b"x"})
    with pytest.raises(DataError, match="empty.zip: no images found .*skipped: notes.txt"):
        load_images(empty, tiny_preprocess)
    broken = _write_zip(tmp_path / "broken.zip", {"0/a.png": b"\x89PNG garbage"})
    with pytest.raises(DataError, match="cannot decode image 0/a.png"):
        load_images(broken, tiny_preprocess)
    eps = io.BytesIO()
    Image.new("RGB", (4, 4)).save(eps, format="EPS")  # needs Ghostscript to decode
    with pytest.raises(DataError, match="a.png is EPS, which cannot be decoded here"):
        load_images(_write_zip(tmp_path / "g.zip", {"a.png": eps.getvalue()}), tiny_preprocess)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported data file"):
        load_images(tmp_path / "notes.txt", tiny_preprocess)
    with pytest.raises(DataError, match="no such file"):
        load_images(tmp_path / "missing", tiny_preprocess)


def test_describe_does_not_decode(tmp_path: Path, tiny_preprocess) -> None:
    path = _write_zip(tmp_path / "x.zip", {"0/a.png": b"\x89PNG garbage", "0/b.png": _png(1)})
    info = describe_data(path, tiny_preprocess)
    assert (info.kind, info.count) == ("zip", 2)
    np.savez(tmp_path / "t.npz", images=np.zeros((5, 3, 16, 16), np.float32))
    assert describe_data(tmp_path / "t.npz", tiny_preprocess).count == 5


@pytest.mark.parametrize("fmt", ["dir", "zip", "tar", "safetensors", "npz"])
def test_dataset_above_the_cap_is_an_error_for_every_format(
        fmt: str, sources: dict, tmp_path: Path, tiny_preprocess) -> None:
    """Never a silent truncation: every input format raises, naming the limit and the setting."""
    want = _expected(tiny_preprocess)
    save_file({"images": want, "labels": torch.tensor([0, 0, 1])}, str(tmp_path / "t.safetensors"))
    np.savez(tmp_path / "t.npz", images=want.numpy(), labels=np.array([0, 0, 1]))
    path = {"safetensors": tmp_path / "t.safetensors", "npz": tmp_path / "t.npz"}.get(fmt) \
        or sources[fmt]
    small = DataLimits(max_images=2)
    for call in (lambda: load_images(path, tiny_preprocess, small),
                 lambda: load_labelled(path, tiny_preprocess, small),
                 lambda: describe_data(path, tiny_preprocess, limits=small),
                 lambda: describe_data(path, tiny_preprocess, labelled=True, limits=small)):
        with pytest.raises(DataError, match=r"3 images, more than the limit of 2 .*max_images"):
            call()


def test_safetensors_images_are_memory_mapped(tmp_path: Path, tiny_preprocess) -> None:
    """Preprocessed tensor files are read lazily (no copy of the whole file in memory)."""
    x = torch.randn(4, 3, 16, 16)
    save_file({"images": x}, str(tmp_path / "t.safetensors"))
    host = load_images(tmp_path / "t.safetensors", tiny_preprocess)
    assert not host.data.is_pinned() and torch.equal(host.materialize(), x)
    assert not host.data.untyped_storage().resizable()  # borrowed from the mapping, not a copy
