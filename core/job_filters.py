"""Filters of the merge list (GET /v1/merges): by status (any of several) and by metadata (the
caller's labels: every key given must hold one of the values given, compared as exact strings).
The same SQL on SQLite and PostgreSQL (SQLAlchemy's JSON path operators)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError

from calm.spec import MAX_METADATA, MetaKey, MetaValue
from core.errors import ServiceError
from core.models import JOB_STATUSES, MergeJob

METADATA_PREFIX = "metadata."
_KEY: TypeAdapter[str] = TypeAdapter(MetaKey)
_VALUE: TypeAdapter[str] = TypeAdapter(MetaValue)


def metadata_filter(items: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """key -> accepted values, from the query's `metadata.<key>=<value>` items; 422
    invalid_request for a key or value no job's metadata could hold."""
    wanted: dict[str, list[str]] = {}
    for name, value in items:
        if not name.startswith(METADATA_PREFIX):
            continue
        key = name[len(METADATA_PREFIX):]
        try:
            _KEY.validate_python(key)
            _VALUE.validate_python(value)
        except ValidationError as e:
            message = e.errors()[0]["msg"]
            raise ServiceError("invalid_request", f"query.{name[:80]}: {message}", 422,
                               [{"loc": f"query.{name[:80]}", "message": message}]) from None  # fmt: skip
        wanted.setdefault(key, [])
        if value not in wanted[key]:
            wanted[key].append(value)
    if len(wanted) > MAX_METADATA:
        raise ServiceError(
            "invalid_request", f"at most {MAX_METADATA} metadata keys to filter by; got {len(wanted)}", 422
        )
    return wanted


def job_filters(statuses: Sequence[str] | None, metadata: Mapping[str, Sequence[str]]) -> tuple[Any, ...]:
    """WHERE clauses of the merge list: status in `statuses` (when given), and for each metadata
    key, its value among the given values."""
    clauses: list[Any] = []
    if statuses:
        unknown = sorted(set(statuses) - set(JOB_STATUSES))
        if unknown:
            raise ServiceError("invalid_request", f"unknown status {unknown[0]!r}; statuses: "
                               f"{', '.join(JOB_STATUSES)}", 422)  # fmt: skip
        clauses.append(MergeJob.status.in_(sorted(set(statuses))))
    for key, values in metadata.items():
        clauses.append(MergeJob.meta[key].as_string().in_(list(values)))
    return tuple(clauses)
