"""What a merge job will run on this service: its run options (the request's, with the
workers' device and data cap) and the resolved plan in words — the answer of a dry run
(`POST /v1/merges` with `"dry_run": true`)."""

from __future__ import annotations

from typing import Any

from calm.run_options import RunOptions
from core.job_request import JobCreate
from core.settings import Settings


def service_run(requested: RunOptions, settings: Settings) -> tuple[RunOptions, list[str]]:
    """The run options a worker uses for a request: `device` is the workers' own
    (CALM_WORKER_DEVICE) and `max_images` at most the service's (CALM_MAX_IMAGES); the rest
    as requested. Also notes for the person, where the request asked otherwise."""
    notes = []
    if requested.device not in ("auto", settings.worker_device):
        notes.append(f"run.device {requested.device!r} is not used: the service's workers run on "
                     f"{settings.worker_device!r} (CALM_WORKER_DEVICE)")
    cap = min(requested.max_images, settings.max_images)
    if requested.max_images > settings.max_images:
        notes.append(f"run.max_images {requested.max_images} is above the service's limit; "
                     f"{settings.max_images} applies (CALM_MAX_IMAGES)")
    run = requested.model_copy(update={"device": settings.worker_device, "max_images": cap})
    return run, notes


def merge_plan(body: JobCreate, request: dict[str, Any], settings: Settings,
               data_notes: list[str] | None = None) -> dict[str, Any]:
    """The dry run's answer: the plan in words, the run options that will apply, notes (with
    `data_notes`: what the file checks noted), and the normalised request (what a real POST
    would store)."""
    run, notes = service_run(body.run, settings)
    return {
        "object": "merge_plan",
        "method": body.method,
        "tasks": body.task_names(),
        "merges": body.methods(),
        "plan": body.describe(),
        "run": run.model_dump(mode="json"),
        "notes": notes + list(data_notes or ()),
        "request": request,
    }
