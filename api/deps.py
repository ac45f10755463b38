"""Dependencies: settings, DB session, storage and the caller's tenant (Bearer API key)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from core.admin import authenticate
from core.errors import ServiceError
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
    """The tenant id of a valid Bearer key; 401 invalid_api_key otherwise."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ServiceError(
            "invalid_api_key", "send your API key as 'Authorization: Bearer <key>'", 401, None, challenge
        )
    with request.app.state.sessionmaker() as session:
        tenant = authenticate(session, credentials.credentials)
    if tenant is None:
        raise ServiceError("invalid_api_key", "the API key is unknown or revoked", 401, None, challenge)
    return tenant


TenantDep = Annotated[str, Depends(get_tenant)]
