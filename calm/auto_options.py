"""Options of `method: "auto"`: which candidate merges to run and their options. Pure pydantic:
no torch here. The candidates are read from calm.registry (imported lazily: the registry lists
this class)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from calm.options import MethodOptions, OptionError, method_tag

DEFAULT_CANDIDATES = ("calm", "tsv_m", "iso_cts", "iso_c", "ties", "task_arithmetic", "average")


class AutoOptions(MethodOptions):
    """Run every candidate on one loaded context (one load of the data, one pseudo-label pass),
    score each on the held-out pseudo-labelled samples and keep the best."""

    method: Literal["auto"] = method_tag("auto")
    function: ClassVar[str] = "calm.methods.auto:auto"
    title: ClassVar[str] = "auto: run the candidates, keep the best by held-out pseudo-label agreement"
    baseline: ClassVar[bool] = False

    candidates: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CANDIDATES), min_length=1, max_length=16,
        description="Methods to run, in order (registry names, not 'auto'); ties go to the "
        "earlier one.")
    candidate_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Options per candidate, e.g. {\"calm\": {\"epochs\": 50}}; a candidate "
        "without an entry runs with its defaults.")

    @field_validator("candidates")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        from calm.registry import REGISTRY
        from calm.suggest import did_you_mean

        for name in names:
            if name == "auto" or name not in REGISTRY:
                choices = [n for n in REGISTRY if n != "auto"]
                raise ValueError(f"unknown candidate {name!r}.{did_you_mean(name, choices)} "
                                 f"Choose from: {', '.join(choices)}")
        if len(set(names)) != len(names):
            raise ValueError("each candidate may appear once")
        return names

    @model_validator(mode="after")
    def _options_fit(self) -> AutoOptions:
        for name in self.candidate_options:
            if name not in self.candidates:
                raise ValueError(f"candidate_options.{name}: {name!r} is not among the candidates")
            try:
                self.options_of(name)
            except ValueError as exc:  # pydantic's ValidationError is a ValueError
                raise ValueError(f"candidate_options.{name}: {exc}") from exc
        return self

    def options_of(self, name: str) -> MethodOptions:
        """The typed options of candidate `name`."""
        from calm.registry import parse_options

        return parse_options(name, self.candidate_options.get(name))

    def check_tasks(self, names: list[str]) -> None:
        for cand in self.candidates:
            try:
                self.options_of(cand).check_tasks(names)
            except OptionError as exc:
                raise OptionError(f"candidate_options.{cand}.{exc.field}", exc.message) from exc

    def describe(self, names: list[str]) -> list[str]:
        lines = [f"auto: {len(self.candidates)} candidates on one load of the data, the best by "
                 "held-out pseudo-label agreement (test labels never choose)"]
        for cand in self.candidates:
            lines += [f"  {line}" for line in self.options_of(cand).describe(names)]
        return lines
