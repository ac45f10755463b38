"""Dependencies: settings, DB session, storage and the caller's tenant (Bearer API key)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from core.admin import authenticate
from core.errors import ServiceError
from core.quotas import tenant_limits, too_many
from core.settings import Settings
from core.storage import Storage

bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_sessionmaker(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessionmaker


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.sessionmaker() as session:
        yield session


def get_storage(request: Request) -> Storage:
    return request.app.state.storage


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_db)]
SessionMakerDep = Annotated[sessionmaker[Session], Depends(get_sessionmaker)]
StorageDep = Annotated[Storage, Depends(get_storage)]


def get_tenant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The tenant id of a valid Bearer key (401 invalid_api_key otherwise), within the tenant's
    request rate (429 rate_limited with Retry-After otherwise)."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ServiceError(
            "invalid_api_key", "send your API key as 'Authorization: Bearer <key>'", 401, None, challenge
        )
    settings: Settings = request.app.state.settings
    with request.app.state.sessionmaker() as session:
        tenant = authenticate(session, credentials.credentials)
        if tenant is None:
            raise ServiceError(
                "invalid_api_key", "the API key is unknown, revoked or expired", 401, None, challenge
            )
        limits = tenant_limits(session, tenant, settings)
    wait = request.app.state.rate_limiter.take(tenant, limits.rate_per_s, limits.burst)
    if wait > 0:
        raise too_many(
            "rate_limited", f"over {limits.rate_per_s:g} requests per second; slow down", wait
        )
    return tenant


TenantDep = Annotated[str, Depends(get_tenant)]


ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"  # ids are "<kind>-<24 hex>"
IdPath = Annotated[str, Path(pattern=ID_PATTERN, description="An id this API returned.")]
Cursor = Annotated[
    str | None, Query(pattern=ID_PATTERN, description="`next_cursor` of the previous page.")
]
