"""The queue client: a Celery app used only to *send* merge tasks, by name (no torch here).

Two brokers, one code path:

- ``filesystem://`` — the embedded default. kombu's filesystem transport keeps each message as
  a file in one folder under ``settings.broker_dir``; producer and consumer processes read and
  write the same folder, so it works across processes with no server.
- ``redis://`` — production. ``visibility_timeout`` is longer than the longest job, so an
  ``acks_late`` task that is still running is not redelivered to a second worker.

The worker builds its app from :func:`make_celery` too, so both sides agree on the broker.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from celery import Celery

from core.settings import Settings, get_settings

MERGE_TASK = "calm.run_merge"
MERGE_QUEUE = "merges"
FILESYSTEM_POLL_S = 0.2


class QueueUnavailable(RuntimeError):
    """The broker could not be reached; the caller should answer 503 and keep nothing queued."""


def filesystem_options(broker_dir: Path) -> dict[str, Any]:
    """Transport options for kombu's filesystem broker, folders created on demand.

    Producers write to and consumers read from the same ``queue`` folder. Consumed messages
    are moved to ``processed`` before being read (kombu cannot move a file onto its own folder,
    so that one must differ); ``control`` holds the exchange tables (remote control, fanout).
    """
    folders = {
        "data_folder_in": broker_dir / "queue",
        "data_folder_out": broker_dir / "queue",
        "processed_folder": broker_dir / "processed",
        "control_folder": broker_dir / "control",
    }
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return {**{k: str(v) for k, v in folders.items()}, "polling_interval": FILESYSTEM_POLL_S}


def broker_config(
    broker_url: str, broker_dir: str | Path, visibility_timeout_s: int
) -> dict[str, Any]:
    """Celery configuration shared by the API (producer) and the worker (consumer)."""
    if broker_url.startswith("filesystem://"):
        options = filesystem_options(Path(broker_dir).resolve())
    elif broker_url.startswith(("redis://", "rediss://", "sentinel://")):
        options = {"visibility_timeout": int(visibility_timeout_s)}
    else:
        options = {}
    return {
        "broker_url": broker_url,
        "broker_transport_options": options,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 5.0,
        "task_default_queue": MERGE_QUEUE,
        "task_ignore_result": True,  # the database is the source of truth, not a result backend
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0.2,
            "interval_step": 0.5,
        },
    }


def make_celery(main: str = "calm") -> Celery:
    """A Celery app configured from the current settings (a fresh one on every call)."""
    app = Celery(main, set_as_current=False)
    app.conf.update(_current_config())
    return app


def _current_config() -> dict[str, Any]:
    s = get_settings()
    return broker_config(s.broker_url, s.broker_dir, s.visibility_timeout_s)


@lru_cache(maxsize=4)
def _client_for(broker_url: str, broker_dir: str, visibility_timeout_s: int) -> Celery:
    app = Celery("calm-client", set_as_current=False)
    app.conf.update(broker_config(broker_url, broker_dir, visibility_timeout_s))
    return app


def get_app(settings: Settings | None = None) -> Celery:
    """The producer app for `settings` (default: the process's; the API passes its own),
    cached per broker configuration."""
    s = settings or get_settings()
    return _client_for(s.broker_url, str(Path(s.broker_dir).resolve()), s.visibility_timeout_s)


def enqueue_merge(job_id: str, settings: Settings | None = None) -> None:
    """Send ``calm.run_merge(job_id)`` to the ``merges`` queue; raises QueueUnavailable."""
    try:
        get_app(settings).send_task(MERGE_TASK, args=[str(job_id)], queue=MERGE_QUEUE)
    except Exception as e:  # kombu raises OperationalError / OSError / ChannelError
        raise QueueUnavailable(f"could not enqueue merge {job_id}: {e}") from e


def broker_ping(timeout_s: float = 2.0, settings: Settings | None = None) -> bool:
    """True when the broker accepts a connection within ``timeout_s`` (for /readyz)."""
    try:
        with get_app(settings).connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout_s)
            if conn.transport.driver_type == "redis":
                conn.default_channel.client.ping()
        return True
    except Exception:
        return False
