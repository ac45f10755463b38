"""/healthz (the process is up) and /readyz (database and broker reachable)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from api.errors import error_response
from core.queue import broker_ping

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: answers while the process runs."""
    return {"status": "ok"}


def _database_ok(request: Request) -> bool:
    try:
        with request.app.state.sessionmaker() as session:
            session.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


@router.get("/readyz", responses={503: {"description": "database or broker unreachable"}})
async def readyz(request: Request) -> JSONResponse:
    """Readiness: a database query and a broker connection both succeed (else 503)."""
    checks = {
        "database": "ok" if await run_in_threadpool(_database_ok, request) else "unreachable",
        "broker": "ok" if await run_in_threadpool(broker_ping, 2.0, request.app.state.settings)
        else "unreachable",
    }
    if all(v == "ok" for v in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    failing = ", ".join(k for k, v in checks.items() if v != "ok")
    return error_response(503, "not_ready", f"unreachable: {failing}", details=checks)
