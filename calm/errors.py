"""Errors the library raises on bad input. Each has a stable `code` the service maps to a 4xx."""

from __future__ import annotations


class CalmError(ValueError):
    """Bad input: a person can act on `message`; `code` is stable for programs."""

    code = "invalid_input"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class UnsafeCheckpointError(CalmError):
    code = "unsafe_checkpoint"


class CheckpointMismatchError(CalmError):
    code = "checkpoint_mismatch"


class DataError(CalmError):
    code = "invalid_data"


class MergeCancelled(Exception):
    """Raised inside `merge` when `should_cancel()` turns true; nothing is written."""
