"""Response schemas (the request body, JobCreate, lives in core.job_request)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.errors import ErrorBody, ErrorResponse
from calm.run_options import RunOptions
from core.file_checks import HIDDEN_META
from core.job_request import JobCreate
from core.models import JOB_STATUSES, FileObject, JobEvent, MergeJob

__all__ = ["ErrorBody", "ErrorResponse", "JobCreate", "JobStatus"]
JobStatus = Literal[JOB_STATUSES]  # type: ignore[valid-type]  # the tuple's names, one place


class TensorInfo(BaseModel):
    dtype: str
    shape: list[int]


class FilePublic(BaseModel):
    id: str
    object: Literal["file"] = "file"
    purpose: str
    filename: str
    bytes: int
    sha256: str
    status: str
    format: str
    metadata: dict[str, Any] = Field(description="What validation found: e.g. images, classes, "
                                     "rows, a `note` on skipped files (tables omitted).")
    created_at: datetime

    @classmethod
    def of(cls, f: FileObject) -> FilePublic:
        meta = {k: v for k, v in (f.meta or {}).items() if k not in HIDDEN_META}
        return cls(
            id=f.id, purpose=f.purpose, filename=f.filename, bytes=f.bytes, sha256=f.sha256,
            status=f.status, format=f.format, metadata=meta, created_at=f.created_at,
        )  # fmt: skip


class FileDetail(FilePublic):
    tensors: dict[str, TensorInfo] | None = Field(
        default=None, description="safetensors files: name -> dtype and shape."
    )

    @classmethod
    def of(cls, f: FileObject) -> FileDetail:
        return cls(**FilePublic.of(f).model_dump(), tensors=(f.meta or {}).get("tensors"))


class FilesPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[FilePublic]
    has_more: bool
    next_cursor: str | None = Field(description="Pass as `after` to get the next page; null on the last.")


class JobError(BaseModel):
    code: str
    message: str


class JobSummary(BaseModel):
    """A job as lists show it: everything but the request body."""

    id: str
    object: Literal["merge"] = "merge"
    status: JobStatus
    stage: str | None
    progress: float = Field(description="Overall progress fraction in [0, 1].")
    method: str
    seed: int
    cancel_requested: bool
    attempt: int = Field(description="Runs started so far (0 while queued for the first time).")
    max_attempts: int = Field(description="A run whose worker died is retried up to this many runs.")
    error: JobError | None
    metadata: dict[str, str]
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result_files: dict[str, str] | None = Field(
        default=None, description="Download paths once the job has succeeded."
    )

    @classmethod
    def fields_of(cls, j: MergeJob) -> dict[str, Any]:
        error = None
        if j.error_code or j.error_message:
            error = JobError(code=j.error_code or "internal_error", message=j.error_message or "")
        files = None
        if j.status == "succeeded":
            base = f"/v1/merges/{j.id}"
            files = {"merged": f"{base}/result", "masks": f"{base}/masks", "report": f"{base}/report",
                     "report_html": f"{base}/report.html", "archive": f"{base}/archive"}
        return dict(
            id=j.id, status=j.status, stage=j.stage, progress=j.progress, method=j.method,
            seed=j.seed, cancel_requested=j.cancel_requested, attempt=j.attempt,
            max_attempts=j.max_attempts, error=error,
            metadata=j.meta or {}, created_at=j.created_at, updated_at=j.updated_at,
            started_at=j.started_at, finished_at=j.finished_at, result_files=files,
        )  # fmt: skip

    @classmethod
    def of(cls, j: MergeJob) -> JobSummary:
        return cls(**cls.fields_of(j))


class JobPublic(JobSummary):
    request: dict[str, Any] = Field(description="The validated request, all options explicit.")

    @classmethod
    def of(cls, j: MergeJob) -> JobPublic:
        return cls(**cls.fields_of(j), request=j.request)


class MergePlan(BaseModel):
    """The answer of a dry run: what a merge of this request would do, on this service."""

    object: Literal["merge_plan"] = "merge_plan"
    method: str
    tasks: list[str]
    merges: list[str] = Field(description="The merges a run makes: the method, then each baseline.")
    plan: list[str] = Field(description="The resolved plan in words (as `calm-merge validate` prints).")
    run: RunOptions = Field(description="The run options a worker will use (its own device).")
    notes: list[str] = Field(description="Where the service does otherwise than the request asks, "
                             "and what the file checks noted (files skipped in an archive, eval "
                             "images without a label).")
    request: dict[str, Any] = Field(description="The validated request, every option explicit.")


class JobsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobSummary] = Field(description="Summaries: GET a job for its request body.")
    has_more: bool
    next_cursor: str | None = Field(description="Pass as `after` to get the next page; null on the last.")


class EventPublic(BaseModel):
    seq: int
    created_at: datetime
    level: str
    stage: str | None
    message: str
    fraction: float | None
    metrics: dict[str, Any] | None

    @classmethod
    def of(cls, e: JobEvent) -> EventPublic:
        return cls(
            seq=e.seq, created_at=e.created_at, level=e.level, stage=e.stage, message=e.message,
            fraction=e.fraction, metrics=e.metrics,
        )  # fmt: skip


class EventsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[EventPublic]
    has_more: bool
    next_cursor: str = Field(
        description="Pass as `after` for the next page. Unlike other lists it is always set (the "
        "last `seq` returned, or `after` if none): a running job adds events, so poll with it."
    )
    next_after_seq: int = Field(
        deprecated=True, description="Deprecated: `next_cursor` as a number (for `after_seq`)."
    )


class MaskPublic(BaseModel):
    task: str
    overall_density: float = Field(description="Share of parameters taken from this task.")
    density: dict[str, float] = Field(description="Parameter name -> share of mask ones.")


class MasksPublic(BaseModel):
    job_id: str
    data: list[MaskPublic]
    download: str | None = Field(description="Path of masks.safetensors ('<task>::<param>').")


class EvaluationPublic(BaseModel):
    task: str
    model_kind: str = Field(description="zero_shot, individual, merged, or a baseline method.")
    accuracy: float
    samples: int | None


class ReportPublic(BaseModel):
    job_id: str
    status: str
    evaluations: list[EvaluationPublic]
    table: dict[str, dict[str, float]] = Field(
        description="model_kind -> task -> accuracy, plus 'average' over the tasks."
    )
    report: dict[str, Any] | None = Field(description="The merge's full report.json.")
