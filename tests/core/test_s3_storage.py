"""The one storage interface on both backends: LocalStorage and S3Storage against a real
S3-compatible server (moto's standalone server): atomic streamed writes (multipart on S3),
the cap, ranged reads, local copies (cached on S3), listing and deletes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings
from core.storage import FileTooLarge, LocalStorage, Storage, storage_from

MiB = 1024**2


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "storage")
    endpoint = request.getfixturevalue("s3_endpoint")
    env = endpoint.env(tmp_path / "cache")
    settings = Settings(**{k.removeprefix("CALM_").lower(): v for k, v in env.items()}, s3_part_bytes=5 * MiB)
    return storage_from(settings)


def blob(n: int, seed: int = 0) -> bytes:
    return (hashlib.sha256(str(seed).encode()).digest() * (n // 32 + 1))[:n]


def chunks(data: bytes, size: int = 1 * MiB + 7) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def multipart_uploads(store: Any) -> list[Any]:
    return store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])


def test_streamed_write_read_and_range(store: Storage) -> None:
    data = blob(12 * MiB + 123)  # three parts on S3 (5 MiB parts)
    key = "results/j1/merged.safetensors"
    size, sha = store.write_stream(key, chunks(data))
    assert (size, sha) == (len(data), hashlib.sha256(data).hexdigest())
    assert store.exists(key) and store.size(key) == size
    with store.open(key) as f:
        assert f.read(10) == data[:10]
    got = b"".join(store.read_range(key, 5 * MiB - 3, 6 * MiB + 4))
    assert got == data[5 * MiB - 3 : 6 * MiB + 5]
    assert store.path(key).read_bytes() == data
    assert not store.exists("results/j1/other.bin")


def test_cap_mid_stream_and_a_failed_rewrite_leave_nothing(store: Storage) -> None:
    with pytest.raises(FileTooLarge):
        store.write_stream("big.bin", chunks(blob(11 * MiB)), max_bytes=7 * MiB)
    assert not store.exists("big.bin")
    store.write_stream("k.bin", [b"old"])

    def broken() -> Iterator[bytes]:
        yield blob(6 * MiB)
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        store.write_stream("k.bin", broken())
    with store.open("k.bin") as f:
        assert f.read() == b"old"
    if hasattr(store, "client"):
        assert multipart_uploads(store) == []  # aborted, not left to accrue storage


def test_put_file_list_and_delete_prefix(store: Storage, tmp_path: Path) -> None:
    staged = store.staging_dir() / "report.json"
    staged.write_bytes(b'{"ok": true}')
    assert store.put_file("results/j2/report.json", staged)[0] == 12
    assert not staged.exists()
    store.write_stream("results/j2/masks.safetensors", [b"m" * 10])
    store.write_stream("results/j20/x.bin", [b"x"])
    listed = {b.key: b.size for b in store.list("results/j2")}
    assert listed == {"results/j2/report.json": 12, "results/j2/masks.safetensors": 10}
    store.delete("results/j2")
    assert store.list("results/j2") == [] and store.exists("results/j20/x.bin")
    store.delete("results/j20/x.bin")
    store.delete("results/j20/missing.bin")  # absent: no error
    assert not store.exists("results/j20/x.bin")


def test_s3_local_copies_are_cached_and_shared(s3_endpoint: Any, tmp_path: Path) -> None:
    """A worker elsewhere: a second storage object (another process, other cache) sees the
    API's upload; its first `path` downloads into its cache, later ones reuse the copy."""
    env = s3_endpoint.env(tmp_path / "api-cache")
    fields = {k.removeprefix("CALM_").lower(): v for k, v in env.items()}
    api = storage_from(Settings(**fields))
    data = blob(3 * MiB, seed=2)
    api.write_stream("files/t/file-1.safetensors", [data])
    assert api.cache.get("files/t/file-1.safetensors", len(data)) is not None  # teed on the way
    worker = storage_from(Settings(**{**fields, "storage_cache_dir": str(tmp_path / "worker-cache")}))
    first = worker.path("files/t/file-1.safetensors")
    assert first.read_bytes() == data and first.is_relative_to(tmp_path / "worker-cache")
    os.utime(first, (1, 1))
    assert worker.path("files/t/file-1.safetensors") == first and first.stat().st_mtime > 1  # a hit
    worker.cache.max_bytes, worker.cache.min_age_s = 0, 0.0
    os.utime(first, (1, 1))
    assert worker.cache.trim() == len(data) and not first.exists()  # trimmed to the cap
    worker.delete("files/t/file-1.safetensors")
    with pytest.raises(FileNotFoundError):
        worker.path("files/t/file-1.safetensors")
