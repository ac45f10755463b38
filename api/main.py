"""The app factory: `uvicorn --factory api.main:create_app` (or `api.main:app`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from sqlalchemy.orm import sessionmaker
from starlette.concurrency import run_in_threadpool

from api import errors
from api.limits import BodyLimit
from api.query_params import reject_unknown_query
from api.routes import events, files, health, merges, results, uploads
from core.admin import ensure_tenant_key
from core.db import make_engine, migrate
from core.quotas import RateLimiter
from core.settings import Settings, get_settings
from core.storage import storage_from

DESCRIPTION = """Merge fine-tuned CLIP models with CALM (Consensus-Aware Localized Merging).

Upload checkpoints and unlabeled data (`/v1/files`; large files resumably in parts with
`/v1/uploads`), create a merge job (`/v1/merges`), follow
its progress (poll, or stream its events), then download the merged checkpoint, masks and
report. Authenticate with `Authorization: Bearer <API key>`. Errors are JSON:
`{"error": {"code": "...", "message": "...", "details": ...}}` with a stable code (listed in
docs/errors.md); every status an operation can return is listed under it. A query parameter an
operation does not list is refused (400 unknown_query_parameter). Lists are paged alike: pass
a page's `next_cursor` as `after` (docs/api.md). Requests per second,
unfinished jobs and stored bytes are limited per tenant: 429 with `Retry-After`."""


def _bootstrap(app: FastAPI) -> None:
    s: Settings = app.state.settings
    if s.auto_migrate:
        migrate(s.database_url)
    if s.bootstrap_api_key:
        with app.state.sessionmaker() as session:
            ensure_tenant_key(session, s.bootstrap_tenant, s.bootstrap_api_key)
            session.commit()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await run_in_threadpool(_bootstrap, app)
    yield
    app.state.engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    """A fresh app bound to `settings` (default: from the environment)."""
    settings = settings or get_settings()
    app = FastAPI(
        title="CALM merging service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        dependencies=[Depends(reject_unknown_query)],
    )
    app.state.settings = settings
    app.state.engine = make_engine(settings.database_url)
    app.state.sessionmaker = sessionmaker(app.state.engine, expire_on_commit=False)
    app.state.storage = storage_from(settings)
    app.state.rate_limiter = RateLimiter()
    app.add_middleware(BodyLimit, limit=settings.max_json_body_bytes)
    errors.install(app)
    for module in (health, files, uploads, merges, events, results):
        app.include_router(module.router, responses=errors.responses(400))  # unknown_query_parameter
    return app


def __getattr__(name: str) -> FastAPI:
    """`api.main:app` builds the app on first access (so importing this module is cheap)."""
    if name == "app":
        globals()["app"] = create_app()
        return globals()["app"]
    raise AttributeError(name)
