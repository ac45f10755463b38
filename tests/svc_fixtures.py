"""Helpers and fixtures for the service tests (tests/core, tests/api, tests/migrations).

Real databases only: a SQLite file, and PostgreSQL when CALM_TEST_POSTGRES_URL is set (each
session creates and drops its own uniquely named database). With `CI` set, an unreachable
PostgreSQL fails the PostgreSQL tests instead of skipping them. Test files are written here
without torch (safetensors and .npy headers by hand).
"""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from math import prod
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from core.db import migrate
from core.tensor_headers import SAFETENSORS_DTYPES

DB_KINDS = ["sqlite", "postgresql"]


def postgres_admin_url() -> str:
    """CALM_TEST_POSTGRES_URL, or skip (fail under CI) when unset or unreachable."""
    url = os.environ.get("CALM_TEST_POSTGRES_URL")
    ci = bool(os.environ.get("CI"))
    if not url:
        if ci:
            pytest.fail("CI is set but CALM_TEST_POSTGRES_URL is not")
        pytest.skip("CALM_TEST_POSTGRES_URL is not set")
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 5})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as e:  # unreachable server
        if ci:
            pytest.fail(f"PostgreSQL at CALM_TEST_POSTGRES_URL is unreachable: {e}")
        pytest.skip(f"PostgreSQL unreachable: {e}")
    return url


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database (dropped afterwards); yields its URL."""
    admin = postgres_admin_url()
    name = f"calm_test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@contextmanager
def fresh_database(kind: str, directory: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{directory / 'calm.db'}"
    else:
        with fresh_postgres_database() as url:
            yield url


@pytest.fixture(scope="session", params=DB_KINDS)
def migrated_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database shared by a session (tests isolate themselves by tenant)."""
    with fresh_database(request.param, tmp_path_factory.mktemp("db")) as url:
        migrate(url)
        yield url


# ---- files written without torch -------------------------------------------------------------


def safetensors_bytes(tensors: dict[str, tuple[str, list[int]]], seed: int = 0) -> bytes:
    """A valid safetensors file: name -> (dtype, shape), data = deterministic bytes (each
    element's lowest byte set: finite floats, non-negative integers)."""
    header: dict[str, object] = {}
    data = bytearray()
    for name, (dtype, shape) in tensors.items():
        item, start = SAFETENSORS_DTYPES[dtype], len(data)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [start, start + prod(shape) * item]}
        for i in range(prod(shape)):
            data += bytes([(i * 7 + seed) % 100]) + bytes(item - 1)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + bytes(data)


def checkpoint_tensors(embed_dim: int = 32, width: int = 16) -> dict[str, tuple[str, list[int]]]:
    """A tiny CLIP-like tensor table (names as open_clip's)."""
    return {
        "visual.conv1.weight": ("F32", [width, 3, 4, 4]),
        "visual.ln_post.weight": ("F32", [width]),
        "visual.proj": ("F32", [width, embed_dim]),
        "text_projection": ("F32", [width, embed_dim]),
        "logit_scale": ("F32", []),
    }


def npy_bytes(descr: str, shape: tuple[int, ...]) -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    itemsize = int(descr[2:]) if descr[2:].isdigit() else 8
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(prod(shape) * itemsize)


def npz_bytes(arrays: dict[str, tuple[str, tuple[int, ...]]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, (descr, shape) in arrays.items():
            z.writestr(f"{name}.npy", npy_bytes(descr, shape))
    return buf.getvalue()


def png_bytes(width: int = 4, height: int = 4) -> bytes:
    """A real (decodable) PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


PNG = png_bytes()


def zip_bytes(names: list[str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in names:
            z.writestr(name, PNG)
    return buf.getvalue()


def tar_bytes(names: list[str], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = len(PNG)
            t.addfile(info, io.BytesIO(PNG))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            t.addfile(info)
    return buf.getvalue()


# ---- rows made through core (real storage, real validation) ---------------------------------

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "head_width": 8, "patch_size": 4},
    "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


def store_file(session, storage, settings, tenant: str, purpose: str, filename: str, data: bytes):  # noqa: ANN001, ANN201
    """Stores and validates `data` as an upload would (returns the FileObject)."""
    from core.file_checks import format_for
    from core.files import finish_upload, storage_key
    from core.models import new_id

    file_id = new_id("file")
    fmt = format_for(filename, purpose)
    key = storage_key(tenant, file_id, fmt)
    size, sha = storage.write_stream(key, [data])
    return finish_upload(
        session, storage, settings, tenant_id=tenant, file_id=file_id, key=key, filename=filename,
        purpose=purpose, fmt=fmt, size=size, sha256=sha,
    )  # fmt: skip


def dataset_bytes(n: int = 4) -> bytes:
    return safetensors_bytes({"images": ("F32", [n, 3, 16, 16])})


def merge_body(base: str, checkpoints: list[str], datasets: list[str], **overrides: object) -> dict:
    """A valid POST /v1/merges body over the given file ids."""
    body: dict[str, object] = {
        "model": {"arch": "calm-svc-tiny", "custom_config": TINY_CONFIG, "checkpoint": base},
        "tasks": [
            {"name": f"task{i}", "checkpoint": c, "unlabeled": d, "classnames": ["cat", "dog"]}
            for i, (c, d) in enumerate(zip(checkpoints, datasets, strict=True))
        ],
        "method": "calm",
        "options": {"epochs": 2, "num_sequential": 1},
        "seed": 7,
    }
    body.update(overrides)
    return body


def core_job_files(session, storage, settings, tenant: str, n_tasks: int = 2) -> dict[str, object]:  # noqa: ANN001
    """Uploads (through core) a base, n task checkpoints and n datasets; returns their ids."""
    ck = safetensors_bytes(checkpoint_tensors())
    base = store_file(session, storage, settings, tenant, "checkpoint", "base.safetensors", ck).id
    tasks = [
        store_file(session, storage, settings, tenant, "checkpoint", f"t{i}.safetensors", ck).id
        for i in range(n_tasks)
    ]
    data = [
        store_file(session, storage, settings, tenant, "dataset", f"d{i}.safetensors", dataset_bytes()).id
        for i in range(n_tasks)
    ]
    return {"base": base, "checkpoints": tasks, "datasets": data}
