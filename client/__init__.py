"""A small, torch-free Python client and CLI (`calm-client`) for the CALM merging service."""

from client.api import FINISHED, ApiError, CalmClient

__all__ = ["FINISHED", "ApiError", "CalmClient"]
