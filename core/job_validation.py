"""Checks a merge request against calm.spec and the caller's files before anything is queued."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from calm.spec import METHOD_OPTIONS, MergeSpec
from core.errors import ServiceError
from core.job_request import JobCreate
from core.models import FileObject
from core.settings import Settings

MAX_MISMATCHES = 5


def invalid_request(err: ValidationError, prefix: tuple[str | int, ...] = ()) -> ServiceError:
    """422 invalid_request naming the failing field paths (e.g. `options.epochs`)."""
    details = [
        {"loc": ".".join(str(p) for p in (*prefix, *e["loc"])), "message": e["msg"]}
        for e in err.errors(include_url=False)
    ]
    text = "; ".join(f"{d['loc']}: {d['message']}" if d["loc"] else d["message"] for d in details)
    return ServiceError("invalid_request", text, status=422, details=details)


def request_hash(request: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def normalise(body: JobCreate) -> dict[str, Any]:
    """Validates options and the spec with calm.spec; returns the request with every option
    explicit (defaults filled), as stored in merge_jobs.request."""
    try:
        options = METHOD_OPTIONS[body.method].model_validate(body.options)
    except ValidationError as e:
        raise invalid_request(e, ("options",)) from None
    body = body.model_copy(update={"options": options.model_dump(mode="json")})
    try:
        MergeSpec.model_validate(body.to_spec_dict(lambda fid: fid))
    except ValidationError as e:
        raise invalid_request(e) from None
    return body.model_dump(mode="json")


def _builtin_config(arch: str) -> dict[str, Any] | None | bool:
    """open_clip's JSON config for `arch` (found without importing open_clip or torch);
    True when open_clip is not installed here (the worker will check)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return True
    path = Path(next(iter(spec.submodule_search_locations))) / "model_configs" / f"{arch}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def embed_dim_for(body: JobCreate) -> int | None:
    """The architecture's embedding width, if known; 400 for unknown or malformed configs."""
    cfg = body.model.custom_config
    if cfg is None:
        found = _builtin_config(body.model.arch)
        if found is None:
            raise ServiceError(
                "unknown_architecture",
                f"model.arch {body.model.arch!r} is not a built-in open_clip architecture; "
                "give its config as model.custom_config",
            )
        cfg = found if isinstance(found, dict) else None
    elif not {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg):
        raise ServiceError(
            "invalid_request",
            "model.custom_config must be an open_clip config with embed_dim, vision_cfg, text_cfg",
            status=422,
        )
    dim = cfg.get("embed_dim") if cfg else None
    return dim if isinstance(dim, int) else None


def resolve_files(
    session: Session, tenant_id: str, body: JobCreate, settings: Settings
) -> dict[str, FileObject]:
    """role -> the caller's processed file of the right purpose (404 for others' ids)."""
    refs = list(body.file_refs())
    if len(body.tasks) > settings.max_tasks_per_job:
        raise ServiceError("too_many_tasks", f"at most {settings.max_tasks_per_job} tasks per job")
    if len(refs) > settings.max_files_per_job:
        raise ServiceError("too_many_files", f"at most {settings.max_files_per_job} files per job")
    ids = {fid for _, fid, _ in refs}
    rows = session.scalars(
        select(FileObject).where(FileObject.id.in_(ids), FileObject.tenant_id == tenant_id)
    ).all()
    found = {f.id: f for f in rows}
    out: dict[str, FileObject] = {}
    for role, fid, purpose in refs:
        f = found.get(fid)
        if f is None:
            raise ServiceError("file_not_found", f"{role}: no file with id {fid!r}", status=404)
        if f.purpose != purpose:
            raise ServiceError(
                "invalid_file_purpose",
                f"{role}: file {fid!r} has purpose {f.purpose!r}; expected {purpose!r}",
            )
        if f.status != "processed":
            raise ServiceError("file_not_ready", f"{role}: file {fid!r} is {f.status}", 409)
        out[role] = f
    return out


def tensor_mismatches(base: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """Human-readable differences between two tensor tables (names, shapes, dtypes)."""
    out = [f"missing tensor {n!r}" for n in base if n not in other]
    out += [f"unexpected tensor {n!r}" for n in other if n not in base]
    for name, spec in base.items():
        got = other.get(name)
        if got is not None and (got["shape"], got["dtype"]) != (spec["shape"], spec["dtype"]):
            out.append(f"{name!r} is {got['dtype']}{got['shape']}, base has {spec['dtype']}{spec['shape']}")
    return out


def check_compatibility(body: JobCreate, files: dict[str, FileObject]) -> None:
    """Every task checkpoint matches the base's tensor table; heads match the embed dim."""
    base = files["model.checkpoint"].meta.get("tensors", {})
    if not any("visual." in name for name in base):
        raise ServiceError(
            "invalid_checkpoint",
            "model.checkpoint has no 'visual.*' tensors: expected an open_clip CLIP state dict",
        )
    dim = embed_dim_for(body)
    proj = base.get("visual.proj")
    if dim is not None and proj is not None and proj["shape"][-1:] != [dim]:
        raise ServiceError(
            "checkpoint_mismatch",
            f"model.checkpoint's visual.proj is {proj['shape']} but {body.model.arch!r} has embed_dim {dim}",
        )
    for i, task in enumerate(body.tasks):
        diff = tensor_mismatches(base, files[f"tasks.{i}.checkpoint"].meta.get("tensors", {}))
        if diff:
            more = f" (and {len(diff) - MAX_MISMATCHES} more)" if len(diff) > MAX_MISMATCHES else ""
            raise ServiceError(
                "checkpoint_mismatch",
                f"tasks.{i}.checkpoint ({task.name}) does not match the base: "
                + "; ".join(diff[:MAX_MISMATCHES])
                + more,
            )
        head = files.get(f"tasks.{i}.head")
        if head is not None and dim is not None and head.meta.get("embed_dim") != dim:
            raise ServiceError(
                "head_mismatch",
                f"tasks.{i}.head has width {head.meta.get('embed_dim')}, the model's is {dim}",
            )
        if head is not None and task.classnames and head.meta.get("classes") != len(task.classnames):
            raise ServiceError(
                "head_mismatch",
                f"tasks.{i}.head has {head.meta.get('classes')} rows but the task lists "
                f"{len(task.classnames)} class names",
            )
