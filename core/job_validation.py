"""Checks a merge request against calm.spec and the caller's files before anything is queued."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from calm.spec import METHOD_OPTIONS, MergeSpec
from core.archs import CLIP_VOCAB, ArchError, image_shape, resolve
from core.errors import ServiceError
from core.job_request import JobCreate
from core.models import FileObject
from core.quotas import check_job_quota
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
    request = body.model_dump(mode="json")
    try:
        json.dumps(request, allow_nan=False)
    except ValueError:
        raise ServiceError("invalid_request", "numbers must be finite (no NaN or Infinity)", 422) from None
    return request


def arch_facts(body: JobCreate) -> dict[str, Any]:
    """The architecture's embed_dim, image size and vocabulary (core.archs); 400 when unknown or
    malformed. Never reads a path: a name is looked up in open_clip's catalogue only."""
    try:
        return resolve(body.model.arch, body.model.custom_config)
    except ArchError as e:
        raise ServiceError(e.code, e.message, details=e.details) from None


def check_text(body: JobCreate, facts: dict[str, Any]) -> None:
    """Templates the worker can format, and a text tower that embeds the tokenizer's ids."""
    for i, task in enumerate(body.tasks):
        for template in task.templates or []:
            try:
                template.format("x")
            except (IndexError, KeyError, ValueError, AttributeError):
                raise ServiceError(
                    "invalid_request",
                    f"tasks.{i}.templates: {template[:80]!r} must hold exactly one '{{}}' and no other "
                    "braces (write '{{' and '}}' for literal ones)",
                    status=422,
                ) from None
        if task.classnames is not None and facts["vocab_size"] < CLIP_VOCAB:
            raise ServiceError(
                "invalid_model_config",
                f"tasks.{i} uses class names, but text_cfg.vocab_size {facts['vocab_size']} is below the "
                f"tokenizer's {CLIP_VOCAB} ids; give a head file instead or a full vocabulary",
            )


def resolve_files(
    session: Session, tenant_id: str, body: JobCreate, settings: Settings
) -> dict[str, FileObject]:
    """role -> the caller's processed file of the right purpose (404 for others' ids); 429
    when the tenant already has its quota of unfinished jobs."""
    check_job_quota(session, tenant_id, settings)
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
    facts = arch_facts(body)
    check_text(body, facts)
    dim = facts["embed_dim"]
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
        check_images(files, i, image_shape(facts))
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


def check_images(files: dict[str, FileObject], i: int, shape: list[int] | None) -> None:
    """Preprocessed image tensors must already have the model's input shape [3, H, W]."""
    for role in (f"tasks.{i}.unlabeled", f"tasks.{i}.eval"):
        f = files.get(role)
        got = f.meta.get("image_shape") if f is not None else None
        if shape is not None and got is not None and list(got) != shape:
            raise ServiceError(
                "image_shape_mismatch",
                f"{role}: images are {got} but the model takes {shape}; preprocess them to that "
                "size or upload the images as a .zip/.tar",
            )
