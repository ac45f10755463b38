"""Suggestions ("did you mean ...?") for names people type: architectures, methods, options.
No torch."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_matches(word: str, choices: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """The choices closest to `word` (case-insensitive), best first."""
    by_lower: dict[str, str] = {}
    for c in choices:
        by_lower.setdefault(c.lower(), c)
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=n, cutoff=cutoff)
    return [by_lower[f] for f in found]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A sentence suggesting the closest choices (one or two), or an empty string."""
    found = close_matches(word, choices, n=2)
    if not found:
        return ""
    return " did you mean " + " or ".join(repr(f) for f in found) + "?"
