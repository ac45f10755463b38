"""What a job produces (masks, evaluations, result files) and what it consumes (its spec)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from calm.result_files import RESULT_FILES
from calm.spec import FileRef
from core.job_events import clean_number
from core.job_request import JobCreate
from core.models import Evaluation, FileObject, JobFile, Mask, MergeJob, utcnow
from core.storage import LocalStorage, Storage, get_storage

# The result files with a column of their own; the others sit beside them in the same folder.
RESULT_COLUMNS = {"merged": "result_key", "masks": "masks_key", "report": "report_key"}


def result_prefix(job_id: str, attempt: int | None = None) -> str:
    """Storage key of the folder of a job's artifacts, results/<job id>, and of one attempt's
    artifacts, results/<job id>/attempt-<n> (two runs of a job never write the same keys)."""
    return f"results/{job_id}" if attempt is None else f"results/{job_id}/attempt-{attempt}"


def result_folder(job: MergeJob) -> str | None:
    """Storage key of the folder holding a finished job's result files (the recorded
    checkpoint's or report's folder), None when the job recorded none."""
    key = job.result_key or job.report_key
    return key.rsplit("/", 1)[0] if key and "/" in key else None


def storage_keys(result_paths: dict[str, Any], storage: LocalStorage | None = None) -> dict[str, str]:
    """{"merged": path-or-key, ...} -> {"result_key": key, ...} (absolute paths made keys).
    Names are calm.result_files.RESULT_FILES' names; those without a column are skipped."""
    out: dict[str, str] = {}
    for name, value in result_paths.items():
        if name not in RESULT_FILES:
            raise ValueError(f"unknown result {name!r}; expected {sorted(RESULT_FILES)}")
        if name not in RESULT_COLUMNS:
            continue
        p = Path(value)
        if p.is_absolute():
            local = storage or get_storage()
            if not isinstance(local, LocalStorage):
                raise ValueError(f"{p}: absolute result paths need local storage; give storage keys")
            key = local.key_for(p)
        else:
            key = p.as_posix()
        out[RESULT_COLUMNS[name]] = key
    return out


def record_masks(
    session: Session, job_id: str, task: str, key: str, density: dict[str, float], overall: float
) -> float:
    """Stores (or replaces) one task's mask: its storage key, per-tensor density and overall
    density (both computed by calm.mask_density). Returns the overall density stored."""
    clean = {name: clean_number(d) or 0.0 for name, d in density.items()}
    row = session.get(Mask, (job_id, task)) or Mask(job_id=job_id, task=task)
    row.storage_key, row.density = key, clean
    row.overall_density = clean_number(overall) or 0.0
    row.created_at = utcnow()
    session.add(row)
    session.commit()
    return row.overall_density


def record_evaluations(session: Session, job_id: str, report: dict[str, Any]) -> int:
    """Stores report["accuracy"][model_kind][task] (with report["samples"][task]) for the
    job's tasks; other keys (averages) are ignored. Returns the number of rows written."""
    job = session.get(MergeJob, job_id)
    if job is None:
        raise LookupError(f"no merge job {job_id!r}")
    tasks = {t["name"] for t in job.request.get("tasks", [])}
    samples = report.get("samples") or {}
    n = 0
    for kind, table in (report.get("accuracy") or {}).items():
        if not isinstance(table, dict):
            continue
        for task, acc in table.items():
            value = clean_number(acc)
            if task not in tasks or value is None:
                continue
            row = session.get(Evaluation, (job_id, task, str(kind)[:64]))
            row = row or Evaluation(job_id=job_id, task=task, model_kind=str(kind)[:64])
            count = samples.get(task)
            row.accuracy = value
            row.sample_count = int(count) if isinstance(count, int | float) else None
            session.add(row)
            n += 1
    session.commit()
    return n


def spec_for_job(session: Session, job: MergeJob, storage: Storage) -> dict[str, Any]:
    """A dict that validates as calm.spec.MergeRequest: the job's request with its files as
    local paths (`storage.path`: on object storage, cached downloads)."""
    rows = session.execute(
        select(JobFile.file_id, FileObject.storage_key)
        .join(FileObject, FileObject.id == JobFile.file_id)
        .where(JobFile.job_id == job.id)
    ).all()
    keys = {file_id: key for file_id, key in rows}

    def path(ref: FileRef) -> str:
        if ref.ref not in keys:
            raise LookupError(f"job {job.id}: file {ref.ref} was deleted")
        return str(storage.path(keys[ref.ref]))

    return JobCreate.from_stored(job.request).with_refs(path)
