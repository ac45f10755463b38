"""From a local merge spec (the same YAML `calm-merge` takes, with file paths) to the body of
`POST /v1/merges` (with file ids), uploading each distinct local file once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

# MergeSpec keys the service does not take: the worker chooses the device.
LOCAL_ONLY = ("device",)
Upload = Callable[[Path, str], str]  # (path, purpose) -> file id


def load_spec(path: str | Path) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a merge spec is a mapping (model, tasks, method, ...)")
    return data


def _resolver(base_dir: Path, upload: Upload) -> Callable[[Any, str], str]:
    done: dict[tuple[Path, str], str] = {}

    def resolve(value: Any, purpose: str) -> str:
        """A local path is uploaded (once per path and purpose); anything else is taken as a
        file id the service already has."""
        p = Path(str(value)).expanduser()
        p = p if p.is_absolute() else base_dir / p
        if not p.is_file():
            if str(value).startswith("file-"):
                return str(value)
            raise FileNotFoundError(f"{value}: no such file (and not a file id)")
        key = (p.resolve(), purpose)
        if key not in done:
            done[key] = upload(p, purpose)
        return done[key]

    return resolve


def job_body(spec: dict[str, Any], upload: Upload, base_dir: Path = Path(".")) -> dict[str, Any]:
    """The service's job body for `spec`: local paths uploaded and replaced by file ids."""
    resolve = _resolver(Path(base_dir), upload)
    body = {k: v for k, v in spec.items() if k not in LOCAL_ONLY}
    model = dict(spec["model"])
    model["checkpoint"] = resolve(model["checkpoint"], "checkpoint")
    body["model"] = model
    tasks = []
    for raw in spec["tasks"]:
        task = {k: v for k, v in raw.items() if v is not None}
        task["checkpoint"] = resolve(task["checkpoint"], "checkpoint")
        task["unlabeled"] = resolve(task["unlabeled"], "dataset")
        for key, purpose in (("head", "head"), ("eval", "eval")):
            if key in task:
                task[key] = resolve(task[key], purpose)
        tasks.append(task)
    body["tasks"] = tasks
    return body
