"""The body of `POST /v1/merges`: the one merge schema (calm.spec.MergeRequest) with the
service's file ids where the library takes paths, plus `dry_run`. Stored verbatim, normalised
(every option explicit, no dry_run), as merge_jobs.request.

The same YAML runs through `calm-merge` (paths), `calm-client` (paths, uploaded and replaced
by file ids) and this body.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, GetCoreSchemaHandler
from pydantic_core import core_schema

from calm.spec import FileRef, MergeRequest

LEGACY_RUN_KEYS = ("precision", "eval_batch_size", "micro_batch_size")
FILE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"


class FileId(str):
    """A file id this service returned (`file-...`), in place of a local path."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any,
                                     handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls, core_schema.str_schema(pattern=FILE_ID_PATTERN),
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )  # fmt: skip


class JobCreate(MergeRequest[FileId]):
    """A merge request. `dry_run: true` validates it (schema, files, plan) and returns the
    resolved plan without creating a job."""

    dry_run: bool = Field(default=False, description="Validate and return the resolved plan; no job.")

    def file_refs(self) -> list[FileRef]:
        """(loc, file id, required purpose) of every referenced file."""
        return list(self.refs())

    @classmethod
    def from_stored(cls, request: dict[str, Any]) -> JobCreate:
        """A stored merge_jobs.request, also one stored before run options moved under `run:`
        (precision, eval_batch_size, micro_batch_size at the top level)."""
        legacy = {k: request[k] for k in LEGACY_RUN_KEYS if k in request}
        if legacy:
            request = {k: v for k, v in request.items() if k not in legacy}
            request["run"] = {**legacy, **(request.get("run") or {})}
        return cls.model_validate(request)

    def stored(self) -> dict[str, Any]:
        """What merge_jobs.request holds: the request, every option explicit, no dry_run."""
        return self.model_dump(mode="json", exclude={"dry_run"})
