"""Request and response bodies of /v1/uploads (resumable multi-part uploads)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas import FileDetail, JobError
from core.models import Upload, UploadPart
from core.uploads import MAX_PARTS

PartNumber = Annotated[int, Field(ge=1, le=MAX_PARTS)]


class UploadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1, max_length=255, description="Its suffix sets the format.")
    purpose: Literal["checkpoint", "dataset", "head", "eval"]
    bytes: int = Field(gt=0, description="The whole file's size; the parts must add up to it.")
    sha256: str | None = Field(
        default=None, pattern="^[0-9a-fA-F]{64}$", description="Of the whole file; checked at complete."
    )


class UploadComplete(BaseModel):
    model_config = ConfigDict(extra="forbid")

    part_numbers: list[PartNumber] | None = Field(
        default=None,
        max_length=MAX_PARTS,
        description="The parts to join, strictly increasing; default: every part received.",
    )


class UploadPartPublic(BaseModel):
    part_number: int
    bytes: int
    sha256: str
    created_at: datetime

    @classmethod
    def of(cls, p: UploadPart) -> UploadPartPublic:
        return cls(part_number=p.part_number, bytes=p.bytes, sha256=p.sha256, created_at=p.created_at)


class UploadPublic(BaseModel):
    id: str
    object: Literal["upload"] = "upload"
    filename: str
    purpose: str
    bytes: int = Field(description="The declared total size.")
    sha256: str | None = Field(description="The declared sha256 of the whole file, if given.")
    status: Literal["pending", "completing", "completed", "cancelled", "failed", "expired"]
    part_size: int = Field(description="Suggested part size (the last part may be smaller).")
    max_parts: int = MAX_PARTS
    received_bytes: int = Field(description="Total size of the parts received so far.")
    parts: list[UploadPartPublic] = Field(description="Parts received (while pending), by number.")
    file_id: str | None = Field(description="The File made by `complete`.")
    error: JobError | None
    created_at: datetime
    expires_at: datetime
    completed_at: datetime | None

    @classmethod
    def of(cls, u: Upload, parts: list[UploadPart]) -> UploadPublic:
        error = JobError(code=u.error_code, message=u.error_message or "") if u.error_code else None
        return cls(
            id=u.id, filename=u.filename, purpose=u.purpose, bytes=u.bytes, sha256=u.sha256,
            status=u.status, part_size=u.part_size, received_bytes=sum(p.bytes for p in parts),
            parts=[UploadPartPublic.of(p) for p in parts], file_id=u.file_id, error=error,
            created_at=u.created_at, expires_at=u.expires_at, completed_at=u.completed_at,
        )  # fmt: skip


class UploadCompleted(BaseModel):
    upload: UploadPublic
    file: FileDetail
