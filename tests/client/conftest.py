"""Client fixtures: the real app (tests/svc_api.py) on SQLite and PostgreSQL, also served over
real HTTP by uvicorn in a thread, so `calm-client` runs exactly as a user runs it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from svc_api import Service, service  # noqa: F401
from svc_fixtures import migrated_db  # noqa: F401

from api.main import create_app


@pytest.fixture
def api_url(service: Service) -> Iterator[str]:  # noqa: F811
    """A fresh app on the service's settings (database, storage, broker) at a free local port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(service.settings), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
