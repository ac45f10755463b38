"""`calm-service` admin commands: API keys (create, list, rotate, revoke) and tenant quotas.

    calm-service create-key TENANT [--name ci]      # prints the new key once
    calm-service list-keys [--tenant TENANT]        # id, non-secret prefix, state, last use
    calm-service rotate-key KEY [--grace-s 3600]    # KEY: id or prefix; new key printed once
    calm-service revoke-key KEY
    calm-service set-quota TENANT [--active-jobs N] [--stored-bytes N] [--rate-per-s X]

TENANT is a tenant's id or name. Keys are stored hashed: a lost key cannot be shown again,
only rotated.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from core.admin import (
    AdminError,
    create_api_key,
    find_tenant,
    key_state,
    list_keys,
    revoke_api_key,
    rotate_api_key,
    set_quota,
)
from core.db import migrate, session_scope

Command = Callable[[argparse.Namespace], int]


def _admin(action: Callable[[Any, argparse.Namespace], None]) -> Command:
    """Runs `action(session, args)` in one transaction; an AdminError exits 1 with its text."""

    def run(a: argparse.Namespace) -> int:
        migrate()
        try:
            with session_scope() as s:
                action(s, a)
        except AdminError as e:
            print(f"calm-service: {e}", file=sys.stderr)
            return 1
        return 0

    return run


def _create_key(s: Any, a: argparse.Namespace) -> None:
    tenant = find_tenant(s, a.tenant)
    key = create_api_key(s, tenant.id, a.name)
    print(f"tenant {tenant.name} ({tenant.id})")
    print(f"API key (shown once, store it now): {key}")


def _list_keys(s: Any, a: argparse.Namespace) -> None:
    rows = list_keys(s, a.tenant)
    print(f"{'id':<30} {'prefix':<13} {'tenant':<20} {'name':<12} {'state':<28} last used")
    for k, tenant in rows:
        used = f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "never"
        print(f"{k.id:<30} {k.prefix:<13} {tenant[:20]:<20} {k.name[:12]:<12} {key_state(k):<28} {used}")


def _rotate_key(s: Any, a: argparse.Namespace) -> None:
    old, key = rotate_api_key(s, a.key, a.grace_s)
    print(f"old key {old.prefix} ({old.id}): {key_state(old)}")
    print(f"new API key (shown once, store it now): {key}")


def _revoke_key(s: Any, a: argparse.Namespace) -> None:
    if not revoke_api_key(s, a.key):
        raise AdminError(f"{a.key!r} is no active API key id or prefix")
    print(f"revoked {a.key}")


def _set_quota(s: Any, a: argparse.Namespace) -> None:
    t = set_quota(
        s, a.tenant, active_jobs=a.active_jobs, stored_bytes=a.stored_bytes, rate_per_s=a.rate_per_s
    )
    show = {"active jobs": t.max_active_jobs, "stored bytes": t.max_stored_bytes,
            "requests/s": t.rate_limit_per_s}  # fmt: skip
    print(f"tenant {t.name}: " + ", ".join(f"{k} {v if v else 'default'}" for k, v in show.items()))


def add_admin_commands(sub: Any) -> None:
    """Adds the key and quota commands to calm-service's subparsers."""
    p = sub.add_parser("create-key", help="a new API key for a tenant (printed once)")
    p.add_argument("tenant", help="tenant id or name")
    p.add_argument("--name", default="", help="a label for the key")
    p.set_defaults(func=_admin(_create_key))
    p = sub.add_parser("list-keys", help="API keys by non-secret prefix, with their state")
    p.add_argument("--tenant", default=None, help="only this tenant's (id or name)")
    p.set_defaults(func=_admin(_list_keys))
    p = sub.add_parser("rotate-key", help="replace a key; the old one stops after --grace-s")
    p.add_argument("key", help="key id or prefix")
    p.add_argument("--grace-s", type=float, default=0.0, help="seconds the old key keeps working")
    p.set_defaults(func=_admin(_rotate_key))
    p = sub.add_parser("revoke-key", help="revoke a key at once")
    p.add_argument("key", help="key id or prefix")
    p.set_defaults(func=_admin(_revoke_key))
    p = sub.add_parser("set-quota", help="override a tenant's quotas (0 = the default)")
    p.add_argument("tenant", help="tenant id or name")
    p.add_argument("--active-jobs", type=int, default=None, help="unfinished merge jobs")
    p.add_argument("--stored-bytes", type=int, default=None, help="files + pending uploads")
    p.add_argument("--rate-per-s", type=float, default=None, help="sustained requests per second")
    p.set_defaults(func=_admin(_set_quota))
