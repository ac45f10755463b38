"""Spec files (YAML or JSON), read the same way by `calm-merge` and `calm-client`: a mapping in
the schema of calm.spec.MergeRequest, where `model.custom_config` may also be the path of a JSON
file and relative paths are relative to the spec file's folder. No torch here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from calm.pretrained import keep_as_written
from calm.spec import FileRef, MergeRequest
from calm.spec_errors import Problem, SpecError, parse


def read_spec_file(path: Path) -> dict[str, Any]:
    """The file's mapping, with a `model.custom_config` path replaced by that JSON file's
    content. Raises SpecError naming what is wrong."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise SpecError([Problem("", f"cannot read spec {path}: {e}")]) from None
    if not isinstance(raw, dict):
        raise SpecError([Problem("", f"spec {path} must be a mapping (model, tasks, method, ...)")])
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("custom_config"), str):
        cfg = path.resolve().parent / Path(model["custom_config"]).expanduser()
        try:
            config = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            problem = Problem("model.custom_config", f"cannot read the JSON file {cfg}: {e}")
            raise SpecError([problem]) from None
        raw = {**raw, "model": {**model, "custom_config": config}}
    return raw


def resolve_paths(request: MergeRequest, root: Path) -> MergeRequest:
    """The request with every relative file path made absolute against `root` — but a base
    checkpoint given as an open_clip pretrained tag or a Hub id (calm.pretrained)."""

    def resolve(ref: FileRef) -> Path:
        if ref.loc == "model.checkpoint" and keep_as_written(ref.ref, root):
            return Path(str(ref.ref))
        return root / Path(ref.ref).expanduser()

    return MergeRequest.model_validate(request.with_refs(resolve))


def load_request(path: Path, overrides: dict[str, Any] | None = None,
                 run_overrides: dict[str, Any] | None = None) -> MergeRequest:
    """A validated spec file, paths resolved; `overrides` (top level, e.g. seed) and
    `run_overrides` (e.g. device) replace the file's values where not None."""
    raw = read_spec_file(path)
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    run = {k: v for k, v in (run_overrides or {}).items() if v is not None}
    if run and isinstance(raw.get("run") or {}, dict):  # a malformed `run:` is reported as such
        raw["run"] = {**(raw.get("run") or {}), **run}
    return resolve_paths(parse(MergeRequest, raw), Path(path).resolve().parent)
