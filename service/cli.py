"""`calm-service`: run the merging service.

    calm-service demo                 # the whole thing on a tiny suite, in a few minutes
    calm-service serve                # API + worker on ./var (SQLite, files, embedded broker)
    calm-service create-tenant alice  # prints an API key once
    calm-service create-key / list-keys / rotate-key / revoke-key / set-quota  (service.admin_cli)
    calm-service worker               # a worker only (production: CALM_BROKER_URL=redis://...)
    calm-service migrate              # alembic upgrade head
    calm-service purge-uploads        # expire old multi-part uploads, delete orphan part files
    calm-service reap-jobs            # retry or fail jobs whose worker died; publish stranded jobs
    calm-service sweeper              # the periodic sweep (reaper, outbox, uploads) in the foreground

Every command reads CALM_* settings from the environment; whatever is unset defaults to the
embedded layout under --data-dir (SQLite file, storage folder, filesystem broker folder).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from service.admin_cli import add_admin_commands
from service.embedded import WORKER_ARGS, EmbeddedService, embedded_env

RESTART_BACKOFF_S = 5.0


def _use_data_dir(data_dir: Path) -> None:
    """Point this process's settings at `data_dir` (unless CALM_* variables say otherwise)."""
    os.environ.update(embedded_env(data_dir))
    from core.settings import get_settings

    get_settings.cache_clear()


def _stop_on_signals() -> None:
    """SIGTERM / SIGHUP stop the children as Ctrl-C does (they run in their own sessions)."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def cmd_serve(a: argparse.Namespace) -> int:
    _stop_on_signals()
    svc = EmbeddedService(a.data_dir, a.host, a.port, worker=not a.no_worker)
    try:
        svc.start()
        print(f"CALM service on {svc.url} (API docs: {svc.url}/docs), data in {a.data_dir}/; "
              "Ctrl-C stops it.", flush=True)  # fmt: skip
        print(f"api pid {svc.api.pid if svc.api else '-'}, "
              f"worker pid {svc.worker.pid if svc.worker else '-'}, "
              f"sweeper pid {svc.sweeper.pid if svc.sweeper else '-'}", flush=True)  # fmt: skip
        print("Create an API key with: calm-service create-tenant NAME", flush=True)
        while (died := svc.failed()) is None or not died.startswith("api"):
            if died is not None:  # its job, if any, is retried (see core.stale_jobs)
                print(f"calm-service: {died}; restarting it", file=sys.stderr, flush=True)
                svc.restart_dead()
                time.sleep(RESTART_BACKOFF_S)  # no tight loop if it keeps failing at start
            time.sleep(0.5)
        print(f"calm-service: {died}; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping...", file=sys.stderr)
        return 0
    finally:
        svc.stop()


def cmd_worker(a: argparse.Namespace) -> int:
    from worker.celery_app import app

    app.worker_main([*WORKER_ARGS[2:], "--loglevel", a.loglevel])
    return 0


def cmd_migrate(_: argparse.Namespace) -> int:
    from core.db import migrate
    from core.settings import get_settings

    migrate()
    print(f"database at head: {get_settings().database_url}")
    return 0


def cmd_create_tenant(a: argparse.Namespace) -> int:
    from core.admin import AdminError, create_tenant
    from core.db import migrate

    migrate()
    try:
        tenant_id, key = create_tenant(a.name)
    except AdminError as e:
        print(f"calm-service: {e}", file=sys.stderr)
        return 1
    print(f"tenant {a.name} ({tenant_id})")
    print(f"API key (shown once, store it now): {key}")
    return 0


def cmd_purge_uploads(_: argparse.Namespace) -> int:
    from core.db import session_scope
    from core.settings import get_settings
    from core.storage import get_storage
    from core.uploads import purge_expired, purge_orphan_parts

    storage, expiry = get_storage(), get_settings().upload_expiry_s
    expired, batch = 0, 500
    with session_scope() as s:
        while (n := purge_expired(s, storage, limit=batch)) > 0:
            expired += n
            if n < batch:
                break
        orphans = purge_orphan_parts(s, storage, expiry)
    print(f"expired {expired} upload(s); deleted {orphans} orphan part file(s) older than {expiry} s")
    return 0


def cmd_reap_jobs(_: argparse.Namespace) -> int:
    from core.db import session_scope
    from core.housekeeping import reap_and_publish
    from core.settings import get_settings

    with session_scope() as s:
        lost, published = reap_and_publish(s)
    after = get_settings().stale_job_after_s
    lines = "".join(f"\n  {j}: {o}" for j, o in lost.items())
    print(f"{len(lost)} job(s) silent for over {after:g} s{lines}")
    print(f"published {len(published)} queued job(s)" + "".join(f"\n  {j}" for j in published))
    return 0


def cmd_sweeper(a: argparse.Namespace) -> int:
    """Sweeps every settings.reaper_period_s until SIGTERM / Ctrl-C."""
    from core.housekeeping import safe_sweep
    from core.settings import get_settings

    _stop_on_signals()
    period = a.every or get_settings().reaper_period_s
    print(f"sweeping every {period:g} s (reaper, outbox, uploads)", flush=True)
    try:
        while True:
            safe_sweep()
            time.sleep(period)
    except KeyboardInterrupt:
        return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from service.demo import run_demo

    return run_demo(a)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="calm-service", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("CALM_DATA_DIR", "var")),
                   help="embedded layout root (default ./var)")  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="API + worker, embedded (no servers needed)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-worker", action="store_true", help="API only")
    serve.set_defaults(func=cmd_serve)
    worker = sub.add_parser("worker", help="a Celery worker for the merges queue")
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(func=cmd_worker)
    sub.add_parser("migrate", help="upgrade the database to head").set_defaults(func=cmd_migrate)
    sub.add_parser("purge-uploads", help="expire old multi-part uploads, delete orphan parts"
                   ).set_defaults(func=cmd_purge_uploads)  # fmt: skip
    sub.add_parser("reap-jobs", help="retry or fail jobs whose worker died; publish stranded jobs"
                   ).set_defaults(func=cmd_reap_jobs)  # fmt: skip
    sweeper = sub.add_parser("sweeper", help="run the periodic sweep (as Celery beat does)")
    sweeper.add_argument("--every", type=float, default=None, help="seconds (default: settings)")
    sweeper.set_defaults(func=cmd_sweeper)
    tenant = sub.add_parser("create-tenant", help="create a tenant; prints its API key once")
    tenant.add_argument("name")
    tenant.set_defaults(func=cmd_create_tenant)
    add_admin_commands(sub)
    demo = sub.add_parser("demo", help="end-to-end demo on a tiny suite over HTTP")
    demo.add_argument("--url", default="http://127.0.0.1:8000",
                      help="use the service here if it is up, else start one on this port")
    demo.add_argument("--api-key", default=os.environ.get("CALM_API_KEY"),
                      help="key for an already running service")
    demo.add_argument("--out", type=Path, default=Path("demo-out"), help="downloads go here")
    demo.add_argument("--cache-dir", type=Path, default=Path("bench/cache"),
                      help="where the tiny suite is built (cached)")
    demo.add_argument("--epochs", type=int, default=20, help="CALM mask-training epochs")
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _use_data_dir(args.data_dir)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
