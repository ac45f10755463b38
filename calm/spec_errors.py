"""Spec errors a person can act on: full option paths, "did you mean", the valid names, and
which method an option belongs to. One translation of pydantic's errors for the library, both
CLIs and the REST API. No torch here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from calm.errors import CalmError
from calm.inputs import TASK_NAME_RULE, ModelSpec, TaskSpec
from calm.options import OptionError
from calm.registry import BASELINE_NAMES, METHOD_NAMES, REGISTRY, methods_taking
from calm.run_options import RUN_FIELDS, RunOptions
from calm.suggest import did_you_mean

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Problem:
    loc: str  # e.g. "options.num_sequential", "" for the whole spec
    message: str

    def __str__(self) -> str:
        return f"{self.loc}: {self.message}" if self.loc else self.message


class SpecError(CalmError):
    """An invalid spec; `problems` lists each one with its path."""

    code = "invalid_spec"

    def __init__(self, problems: list[Problem], code: str | None = None) -> None:
        super().__init__("; ".join(map(str, problems)) or "invalid spec", code)
        self.problems = problems

    def details(self) -> list[dict[str, str]]:
        return [{"loc": p.loc, "message": p.message} for p in self.problems]


def parse(model: type[M], data: Any) -> M:
    """`model.model_validate(data)`, its errors explained (SpecError)."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise SpecError(explain(e, data, model)) from None


def _fields(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """The field names of the (sub-)model at `loc`."""
    sub = {"model": ModelSpec, "tasks": TaskSpec, "run": RunOptions}.get(loc[0]) if loc else model
    return list(sub.model_fields) if sub is not None else []


def _method_of(data: Any) -> str:
    method = data.get("method", "calm") if isinstance(data, dict) else getattr(data, "method", "calm")
    return method if method in REGISTRY else "calm"


def _unknown_option(key: str, method: str) -> str:
    valid = REGISTRY[method].option_names()
    takes = f"method {method!r} takes: {', '.join(valid) or 'no options'}"
    others = [m for m in methods_taking(key) if m != method]
    if others:
        owners = " and ".join(repr(m) for m in others[:3])
        return f"{key!r} is an option of {owners}, not of {method!r}; {takes}"
    hint = did_you_mean(key, valid)
    return f"unknown option for method {method!r};{hint} valid options: {', '.join(valid)}"


def _extra(key: str, loc: tuple[Any, ...], model: type[BaseModel] | None, data: Any) -> str:
    if loc[:1] == ("options",):
        return _unknown_option(key, _method_of(data))
    if len(loc) == 0 and key == "run":
        return ("`run:` belongs to a spec file or request (calm.MergeRequest); with a MergeSpec "
                "pass calm.merge(spec, run=RunOptions(...))")
    if len(loc) == 0 and key in RUN_FIELDS:
        return (f"{key!r} is a run option, not part of what to merge: put it under `run:` "
                f"(in Python: calm.merge(spec, run=RunOptions({key}=...)))")
    fields = _fields(model, loc)
    return f"unknown field;{did_you_mean(key, fields)} valid fields: {', '.join(fields)}"


def _literal(loc: tuple[Any, ...], value: Any, msg: str) -> str:
    if loc == ("method",):
        return (f"unknown method {value!r};{did_you_mean(str(value), METHOD_NAMES)} methods: "
                f"{', '.join(METHOD_NAMES)}")
    if loc[:1] == ("baselines",):
        if value in METHOD_NAMES:
            return f"{value!r} cannot be a baseline; baselines: {', '.join(BASELINE_NAMES)}"
        return (f"unknown method {value!r};{did_you_mean(str(value), BASELINE_NAMES)} baselines: "
                f"{', '.join(BASELINE_NAMES)}")
    return msg


def _one(e: Any, model: type[BaseModel] | None, data: Any) -> Problem | None:
    loc = tuple(e.get("loc", ()))
    if loc[:1] == ("options",) and len(loc) > 1 and loc[1] in METHOD_NAMES:
        loc = ("options", *loc[2:])  # drop the union's tag
    kind, msg = e.get("type", ""), str(e.get("msg", ""))
    error = (e.get("ctx") or {}).get("error")
    if kind == "extra_forbidden":
        msg = _extra(str(loc[-1]), loc[:-1], model, data)
    elif kind == "literal_error":
        msg = _literal(loc, e.get("input"), msg)
    elif isinstance(error, OptionError):
        loc, msg = (*loc, error.field), error.message
    elif kind == "value_error":
        msg = str(error) if error is not None else msg.removeprefix("Value error, ")
    elif kind == "string_pattern_mismatch" and loc[:1] == ("tasks",) and loc[-1:] == ("name",):
        msg = f"{e.get('input')!r} is not a task name: {TASK_NAME_RULE}"
    elif kind in ("union_tag_not_found", "union_tag_invalid"):
        return None  # the bad `method` is reported on its own
    return Problem(".".join(str(p) for p in loc), msg)


def explain(err: ValidationError, data: Any = None, model: type[BaseModel] | None = None) -> list[Problem]:
    """Each of `err`'s errors with its path and a message that says what to do."""
    return explain_errors(err.errors(include_url=False), data, model) or [Problem("", str(err))]


def explain_errors(errors: list[Any], data: Any = None,
                   model: type[BaseModel] | None = None) -> list[Problem]:
    """`explain` for pydantic's error dicts (e.g. FastAPI's, their 'body' prefix removed)."""
    return [p for e in errors if (p := _one(e, model, data)) is not None]
