"""Resumable multi-part uploads (/v1/uploads) of large files, e.g. multi-GB checkpoints.

    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
        f = upload_resumable(http, Path("big.safetensors"), "checkpoint",
                             state_file=Path("big.safetensors.upload.json"))

The file is hashed once (whole file and each part). The upload's id goes to `state_file` as soon
as the upload exists, so running the same call again after a crash or a dropped connection
resumes it: parts the server already holds with the same size and sha256 are skipped, the rest
are sent (each retried on network errors), then the upload is completed and the File returned.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from client.errors import ApiError, api_error

MiB = 1024**2
MAX_PARTS = 10_000
READ_BYTES = 1 << 20
PART_TIMEOUT = httpx.Timeout(60.0, write=None, read=600.0)
COMPLETE_TIMEOUT = httpx.Timeout(60.0, read=3600.0)  # joining and checking a large file


@dataclass(frozen=True)
class Plan:
    size: int
    sha256: str
    part_size: int
    parts: list[str]  # sha256 of part 1, 2, ...


def plan(path: Path, part_size: int) -> Plan:
    """Reads `path` once: its size, sha256, and the sha256 of each `part_size` slice."""
    size = path.stat().st_size
    part_size = max(part_size, -(-size // MAX_PARTS), 1)
    whole, parts = hashlib.sha256(), []
    with path.open("rb") as f:
        for _ in range(max(1, -(-size // part_size))):
            h, left = hashlib.sha256(), part_size
            while left and (chunk := f.read(min(READ_BYTES, left))):
                whole.update(chunk)
                h.update(chunk)
                left -= len(chunk)
            parts.append(h.hexdigest())
    return Plan(size, whole.hexdigest(), part_size, parts)


def _check(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        raise api_error(r)
    return r.json()


def _slice(path: Path, offset: int, length: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        f.seek(offset)
        while length and (chunk := f.read(min(READ_BYTES, length))):
            length -= len(chunk)
            yield chunk


def _load_state(state_file: Path | None, path: Path, purpose: str) -> dict[str, Any] | None:
    if state_file is None or not state_file.is_file():
        return None
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None
    same = state.get("path") == str(path.resolve()) and state.get("purpose") == purpose
    return state if same and isinstance(state.get("part_size"), int) else None


def _save_state(state_file: Path | None, state: dict[str, Any]) -> None:
    if state_file is None:
        return
    tmp = state_file.with_name(state_file.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, state_file)


def state_file_for(path: Path, state_dir: Path | None = None) -> Path | None:
    """Where the upload of `path` is recorded: `<file>.upload.json` next to it, or in `state_dir`
    as `<name>.<8 hex of its full path>.upload.json`. None, with a warning (the upload then
    cannot be resumed), when the file's folder is not writable."""
    path = Path(path)
    if state_dir is not None:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
        return Path(state_dir) / f"{path.name}.{digest}.upload.json"
    if not os.access(path.parent, os.W_OK):
        warnings.warn(
            f"{path.parent} is not writable, so an interrupted upload of {path.name} cannot be "
            "resumed; give a state directory (calm-client --state-dir)", stacklevel=2,
        )  # fmt: skip
        return None
    return path.with_name(f"{path.name}.upload.json")


def _resume(http: httpx.Client, state: dict[str, Any] | None, p: Plan) -> dict[str, Any] | None:
    """The recorded upload if it is for this very file and still usable, else None."""
    if state is None or (state.get("size"), state.get("sha256")) != (p.size, p.sha256):
        return None
    while True:
        r = http.get(f"/v1/uploads/{state['upload_id']}")
        if r.status_code == 404:
            return None
        upload = _check(r)
        if upload["status"] != "completing":
            break
        time.sleep(1.0)  # another run is completing it: wait for the outcome
    if upload["status"] == "failed":  # the same bytes would fail the same way
        err = upload.get("error") or {}
        raise ApiError(400, err.get("code", "upload_failed"), err.get("message", ""))
    return upload if upload["status"] in ("pending", "completed") else None


def _put(http: httpx.Client, url: str, path: Path, offset: int, length: int, retries: int) -> None:
    for attempt in range(retries + 1):
        try:
            r = http.put(
                url, content=_slice(path, offset, length), timeout=PART_TIMEOUT,
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)},
            )  # fmt: skip
            if r.status_code < 500 or attempt == retries:
                _check(r)
                return
        except httpx.TransportError:
            if attempt == retries:
                raise
        time.sleep(min(2.0**attempt, 30.0))


def upload_resumable(
    http: httpx.Client, path: Path, purpose: str, part_size: int = 64 * MiB,
    state_file: Path | None = None, *, retries: int = 3,
    progress: Callable[[int], None] | None = None, filename: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Uploads `path` (as `filename`, default its name) in parts through /v1/uploads, resuming
    the upload recorded in `state_file` if there is one; returns the File object. `http`
    carries the base URL and the API key; `progress(n)` is called with the bytes of each part
    sent or already there."""
    path = Path(path)
    state = _load_state(state_file, path, purpose)
    p = plan(path, state["part_size"] if state else part_size)
    upload = _resume(http, state, p)
    if upload is None:
        body = {"filename": filename or path.name, "purpose": purpose, "bytes": p.size, "sha256": p.sha256}
        upload = _check(http.post("/v1/uploads", json=body))
        state = {"upload_id": upload["id"], "path": str(path.resolve()), "purpose": purpose,
                 "size": p.size, "sha256": p.sha256, "part_size": p.part_size}  # fmt: skip
        _save_state(state_file, state)
    if upload["status"] == "completed":
        file = _check(http.get(f"/v1/files/{upload['file_id']}"))
    else:
        file = _send_and_complete(http, path, p, upload, retries, progress)
    if state_file is not None:
        state_file.unlink(missing_ok=True)
    return file


def _send_and_complete(
    http: httpx.Client, path: Path, p: Plan, upload: dict[str, Any], retries: int,
    progress: Callable[[int], None] | None,
) -> dict[str, Any]:  # fmt: skip
    have = {part["part_number"]: (part["bytes"], part["sha256"]) for part in upload["parts"]}
    for n, sha in enumerate(p.parts, start=1):
        offset = (n - 1) * p.part_size
        length = min(p.part_size, p.size - offset)
        if have.get(n) != (length, sha):
            _put(http, f"/v1/uploads/{upload['id']}/parts/{n}", path, offset, length, retries)
        if progress is not None:
            progress(length)
    body = {"part_numbers": list(range(1, len(p.parts) + 1))}
    done = _check(http.post(f"/v1/uploads/{upload['id']}/complete", json=body, timeout=COMPLETE_TIMEOUT))
    return done["file"]
