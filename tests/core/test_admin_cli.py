"""`calm-service` key and quota commands: create, list by prefix, rotate, revoke, set-quota."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.orm import Session

from core.admin import authenticate, create_tenant
from core.db import session_scope
from service.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_key_commands(cli_env: None, session: Session, capsys: pytest.CaptureFixture[str]) -> None:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    tenant, first = create_tenant(name, session=session)
    session.commit()
    code, out = run(capsys, "create-key", name, "--name", "ci")
    assert code == 0 and "shown once" in out
    second = out.strip().split()[-1]
    code, out = run(capsys, "list-keys", "--tenant", name)
    assert code == 0 and first[:12] in out and second[:12] in out
    assert first not in out and second not in out  # never the secrets
    code, out = run(capsys, "rotate-key", second[:12], "--grace-s", "60")
    assert code == 0 and "expires" in out
    third = out.strip().split()[-1]
    code, _ = run(capsys, "revoke-key", first[:12])
    assert code == 0
    with session_scope() as s:
        assert authenticate(s, first) is None
        assert authenticate(s, second) == tenant  # within its grace period
        assert authenticate(s, third) == tenant
    assert run(capsys, "revoke-key", first[:12])[0] == 1  # already revoked
    assert run(capsys, "create-key", "no-such-tenant")[0] == 1
    code, out = run(capsys, "set-quota", name, "--active-jobs", "3", "--rate-per-s", "2.5")
    assert code == 0 and "active jobs 3" in out and "requests/s 2.5" in out and "stored bytes default" in out
