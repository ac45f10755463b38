"""LocalStorage: atomic writes, hash and size while streaming, the cap, key safety."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.storage import FileTooLarge, LocalStorage, StorageError


def leftovers(storage: LocalStorage) -> list[str]:
    return sorted(p.name for p in storage.root.rglob("*") if p.is_file())


def test_write_stream_hashes_and_sizes_while_streaming(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    chunks = [b"abc" * 1000, b"", b"xyz" * 777]
    size, sha = storage.write_stream("files/t1/a.bin", chunks)
    data = b"".join(chunks)
    assert (size, sha) == (len(data), hashlib.sha256(data).hexdigest())
    assert storage.path("files/t1/a.bin").read_bytes() == data
    assert storage.exists("files/t1/a.bin") and storage.size("files/t1/a.bin") == len(data)
    with storage.open("files/t1/a.bin") as f:
        assert f.read() == data
    assert leftovers(storage) == ["a.bin"]  # no temporary files left


def test_cap_is_enforced_mid_stream_and_cleans_up(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    consumed = []

    def chunks() -> Iterator[bytes]:
        for i in range(100):
            consumed.append(i)
            yield b"x" * 100

    with pytest.raises(FileTooLarge):
        storage.write_stream("big.bin", chunks(), max_bytes=1000)
    assert len(consumed) == 11  # stopped as soon as the cap was crossed, not at the end
    assert not storage.exists("big.bin") and leftovers(storage) == []


def test_failed_rewrite_keeps_the_old_blob(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.write_stream("k.bin", [b"old"])

    def broken() -> Iterator[bytes]:
        yield b"new-partial"
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        storage.write_stream("k.bin", broken())
    assert storage.path("k.bin").read_bytes() == b"old"
    assert leftovers(storage) == ["k.bin"]


def test_uncommitted_writer_is_invisible(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    w = storage.writer("x/y.bin")
    w.write(b"hello")
    assert not storage.exists("x/y.bin")
    size, sha = w.commit()
    assert storage.exists("x/y.bin") and size == 5 and sha == hashlib.sha256(b"hello").hexdigest()


@pytest.mark.parametrize("key", ["", "../escape", "/abs/path", "a//b", "a/./b", "a/../../b"])
def test_unsafe_keys_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(StorageError):
        LocalStorage(tmp_path).path(key)


def test_delete_blob_and_prefix(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.write_stream("results/j1/merged.safetensors", [b"m"])
    storage.write_stream("results/j1/report.json", [b"{}"])
    storage.write_stream("files/t/a.bin", [b"a"])
    storage.delete("files/t/a.bin")
    storage.delete("files/t/missing.bin")  # absent: no error
    assert not storage.exists("files/t/a.bin")
    storage.delete("results/j1")
    assert not storage.path("results/j1").exists()
    assert storage.key_for(storage.path("files/t/z")) == "files/t/z"
