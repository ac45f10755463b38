"""The pieces behind the upload and request checks: the streaming NaN scan, the architecture
catalogue, and limits that never exceed the worker's."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hostile_cases import checkpoint_with, with_values

from core.archs import builtins, resolve
from core.settings import Settings
from core.tensor_stream import FiniteScanner, NonFiniteError


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_the_scan_finds_a_nan_at_any_chunking(chunk: int) -> None:
    bad = checkpoint_with(struct.pack("<f", float("nan")))
    good = checkpoint_with(struct.pack("<f", 1.5))
    for data, raises in ((bad, True), (good, False)):
        scanner = FiniteScanner(1 << 20)
        try:
            for i in range(0, len(data), chunk):
                scanner.feed(data[i : i + chunk])
        except NonFiniteError as e:
            assert raises and e.tensor == "visual.proj"
        else:
            assert not raises


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32", "F64"])
def test_exponent_masks_match_numpy(dtype: str) -> None:
    values = np.array([0.0, -1.5, 3e4, np.inf, -np.inf, np.nan], dtype=np.float32)
    if dtype == "BF16":
        raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    else:
        raw = values.astype({"F16": "<f2", "F32": "<f4", "F64": "<f8"}[dtype]).tobytes()
    for i in range(len(values)):
        item = len(raw) // len(values)
        scanner = FiniteScanner(1 << 20)
        data = with_values(dtype, [1], raw[i * item : (i + 1) * item])
        try:
            scanner.feed(data)
            finite = True
        except NonFiniteError:
            finite = False
        assert finite == bool(np.isfinite(values[i])), (dtype, values[i])


def test_the_catalogue_matches_the_installed_open_clip() -> None:
    open_clip = pytest.importorskip("open_clip")
    from pathlib import Path

    folder = Path(open_clip.__file__).parent / "model_configs"
    names = {p.stem for p in folder.glob("*.json")}
    assert set(builtins()) == names, "run `python -m core.archs` after upgrading open_clip"
    for name in ("ViT-B-32", "RN50"):
        cfg = json.loads((folder / f"{name}.json").read_text())
        assert resolve(name, None)["embed_dim"] == cfg["embed_dim"]


def test_upload_limits_stay_within_the_workers() -> None:
    data = pytest.importorskip("calm.data")
    s, w = Settings(), data.DEFAULT_LIMITS
    assert s.max_images <= w.max_images and s.max_image_pixels <= w.max_pixels
    assert s.max_image_bytes <= w.max_member_bytes and s.max_archive_bytes <= w.max_total_bytes
    assert s.max_archive_members <= w.max_members
