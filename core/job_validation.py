"""Checks a merge request against the caller's files before anything is queued (the spec's
own rules — method, options, K vs T, task names — were checked when JobCreate was parsed)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from calm.image_sets import LabelError, csv_labels, folder_labels, unlabelled_note
from core.archs import CLIP_VOCAB, ArchError, image_shape, resolve
from core.errors import ServiceError
from core.job_request import JobCreate
from core.models import FileObject
from core.quotas import check_job_quota
from core.settings import Settings
from core.tensor_headers import FLOAT_DTYPES

MAX_MISMATCHES = 5


def request_hash(request: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def normalise(body: JobCreate) -> dict[str, Any]:
    """The request as stored in merge_jobs.request: every option explicit, no dry_run."""
    request = body.stored()
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
    """A text tower that embeds the tokenizer's ids wherever class names build the head."""
    for i, task in enumerate(body.tasks):
        if task.classnames is not None and task.head is None and facts["vocab_size"] < CLIP_VOCAB:
            raise ServiceError(
                "invalid_model_config",
                f"tasks.{i} uses class names, but text_cfg.vocab_size {facts['vocab_size']} is below the "
                f"tokenizer's {CLIP_VOCAB} ids; give a head file instead or a full vocabulary",
            )


def resolve_files(
    session: Session, tenant_id: str, body: JobCreate, settings: Settings, *, quota: bool = True
) -> dict[str, FileObject]:
    """loc -> the caller's processed file of the right purpose (404 for others' ids); with
    `quota`, 429 when the tenant already has its quota of unfinished jobs."""
    if quota:
        check_job_quota(session, tenant_id, settings)
    refs = body.file_refs()
    if len(body.tasks) > settings.max_tasks_per_job:
        raise ServiceError("too_many_tasks", f"at most {settings.max_tasks_per_job} tasks per job")
    if len(refs) > settings.max_files_per_job:
        raise ServiceError("too_many_files", f"at most {settings.max_files_per_job} files per job")
    ids = {str(r.ref) for r in refs}
    rows = session.scalars(
        select(FileObject).where(FileObject.id.in_(ids), FileObject.tenant_id == tenant_id)
    ).all()
    found = {f.id: f for f in rows}
    out: dict[str, FileObject] = {}
    for loc, fid, purpose in refs:
        f = found.get(fid)
        if f is None:
            raise ServiceError("file_not_found", f"{loc}: no file with id {fid!r}", status=404)
        if f.purpose != purpose:
            raise ServiceError(
                "invalid_file_purpose",
                f"{loc}: file {fid!r} has purpose {f.purpose!r}; expected {purpose!r}",
            )
        if f.status != "processed":
            raise ServiceError("file_not_ready", f"{loc}: file {fid!r} is {f.status}", 409)
        out[loc] = f
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


def check_compatibility(body: JobCreate, files: dict[str, FileObject]) -> list[str]:
    """Every task checkpoint matches the base's tensor table; heads match the embed dim; eval
    labels fit the classes. Returns notes for the person (skipped files, unlabelled images)."""
    base = files["model.checkpoint"].meta.get("tensors", {})
    if not any("visual." in name for name in base):
        raise ServiceError(
            "invalid_checkpoint",
            "model.checkpoint has no 'visual.*' tensors: expected an open_clip CLIP state dict",
        )
    facts = arch_facts(body)
    check_text(body, facts)
    dim = facts["embed_dim"]
    notes: list[str] = []
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
        notes += check_eval(files, i, task.classnames, head)
    check_tensor_options(body, base)
    return data_notes(files) + notes


def check_eval(files: dict[str, FileObject], i: int, classnames: list[str] | None,
               head: FileObject | None) -> list[str]:
    """The eval set's labels — class folders (names or indices), a label CSV, or a tensor
    file's — resolved against the task's classes the way the worker will (calm.image_sets).
    Returns notes (images the CSV leaves out)."""
    ev, labels = files.get(f"tasks.{i}.eval"), files.get(f"tasks.{i}.eval_labels")
    if ev is None:
        return []
    n = head.meta.get("classes") if head is not None else len(classnames or ()) or None
    if labels is not None and labels.format != "csv":
        raise ServiceError("invalid_eval_data", f"tasks.{i}.eval_labels must be a CSV file "
                           f"(filename,label); got a {labels.format} file")
    if labels is not None and ev.format not in ("zip", "tar"):
        raise ServiceError("invalid_eval_data", f"tasks.{i}.eval_labels labels the images of an archive, "
                           f"but tasks.{i}.eval is a {ev.format} file (it carries its own 'labels')")
    names = ev.meta.get("image_names")
    try:
        if labels is not None:
            if names is None:
                raise LabelError(f"file {ev.id} was uploaded before label CSVs were supported; "
                                 "upload it again")
            found = csv_labels(names, labels.meta["labels"], classnames, n)
            left = [names[j] for j, y in enumerate(found) if y is None]
            return [f"tasks.{i}.eval ({ev.filename}): {unlabelled_note(left)}"] if left else []
        if names is not None:
            folder_labels(names, classnames, n)
            return []
    except LabelError as e:
        what = f"tasks.{i}.eval ({ev.filename})" + (f" with tasks.{i}.eval_labels ({labels.filename})"
                                                  if labels is not None else "")
        raise ServiceError("invalid_eval_data", f"{what}: {e}") from None
    got = ev.meta.get("classes")  # a tensor file's labels (or an archive stored before names were kept)
    if got and n and got > n:
        raise ServiceError("invalid_eval_data", f"tasks.{i}.eval has labels up to {got - 1} but the task "
                           f"has {n} classes")
    return []


def data_notes(files: dict[str, FileObject]) -> list[str]:
    """What the uploads' checks noted (files skipped in an archive), per place in the spec."""
    return [f"{loc} ({f.filename}): {f.meta['note']}" for loc, f in files.items() if f.meta.get("note")]


def check_tensor_options(body: JobCreate, base: dict[str, Any]) -> None:
    """Options that name tensors (exclude_keys) must name merged ones: float visual.* tensors
    of the base checkpoint."""
    names = getattr(body.options, "exclude_keys", None) or []
    merged = {n for n, t in base.items() if n.startswith("visual.") and t["dtype"] in FLOAT_DTYPES}
    unknown = sorted(set(names) - merged)
    if unknown:
        raise ServiceError("invalid_options", f"options.exclude_keys names tensors that are not merged: "
                           f"{unknown[:5]} (use names of float visual.* tensors of the checkpoint)")


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
