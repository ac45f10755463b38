"""From a spec file — the same YAML `calm-merge` takes, with local paths — to the body of
`POST /v1/merges` (the same schema, with file ids). The spec is validated with the library's
own schema (calm.spec, torch-free) before any upload; nothing is stripped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from calm.errors import CalmError
from calm.pretrained import keep_as_written
from calm.spec import MergeRequest
from calm.spec_errors import Problem, SpecError, parse
from calm.spec_file import read_spec_file
from client.local_files import Find, Resolver, Say, Upload, is_file_id


def load_spec(path: str | Path) -> MergeRequest:
    """The spec file, validated (SpecError lists every problem with its path). Its paths are
    kept as written: relative ones are relative to the file's folder."""
    return parse(MergeRequest, read_spec_file(Path(path)))


def with_pretrained(request: MergeRequest, base_dir: Path) -> MergeRequest:
    """A base checkpoint given as an open_clip pretrained tag becomes the cached weights file
    (uploaded like any other); a Hub id is refused (calm.pretrained). Before any upload."""
    ref = request.model.checkpoint
    if is_file_id(str(ref)) or not keep_as_written(ref, base_dir):
        return request
    try:
        from calm.pretrained import base_checkpoint  # open_clip, only for a tag

        path = base_checkpoint(request.model.arch, ref)
    except CalmError as e:
        raise SpecError([Problem("", e.message)], code=e.code) from None
    except ImportError as e:
        problem = f"model.checkpoint {str(ref)!r}: a pretrained tag needs open_clip here ({e}); give the file"
        raise SpecError([Problem("", problem)], code="file_not_found") from None
    return request.model_copy(update={"model": request.model.model_copy(update={"checkpoint": path})})


def job_body(spec: MergeRequest | dict[str, Any], upload: Upload, base_dir: Path = Path("."), *,
             find: Find | None = None, say: Say | None = None, dry_run: bool = False) -> dict[str, Any]:
    """The service's job body for `spec`: every local file (or folder of images, zipped)
    uploaded once — or, with `find`, reused when the service already has it — and replaced by
    its file id. Raises SpecError before any upload when the spec or its files are unusable."""
    request = spec if isinstance(spec, MergeRequest) else parse(MergeRequest, spec)
    request = with_pretrained(request, Path(base_dir))
    resolver = Resolver(base_dir, upload, find, say)
    try:
        problems = resolver.problems(request.refs())
        if problems:
            raise SpecError([Problem("", p) for p in problems], code="file_not_found")
        body = request.with_refs(resolver, exclude_unset=True)
    finally:
        resolver.close()
    if dry_run:
        body["dry_run"] = True
    return body
