"""The queue client (core.queue) and the worker's Celery configuration."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from worker_helpers import use_settings

from core import queue


def _messages(broker_dir: Path) -> list[dict]:
    return [json.loads(p.read_bytes()) for p in sorted((broker_dir / "queue").glob("*.msg"))]


def test_filesystem_enqueue_writes_a_named_task_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_settings(monkeypatch, broker_url="filesystem://", broker_dir=tmp_path / "broker")
    assert queue.broker_ping()
    queue.enqueue_merge("merge-123")
    queue.enqueue_merge("merge-456")
    msgs = _messages(tmp_path / "broker")
    assert [m["headers"]["task"] for m in msgs] == ["calm.run_merge"] * 2
    bodies = sorted(json.loads(base64.b64decode(m["body"]))[0] for m in msgs)  # names: time_uuid
    assert bodies == [["merge-123"], ["merge-456"]]
    assert all(m["properties"]["delivery_info"]["routing_key"] == "merges" for m in msgs)
    use_settings(monkeypatch)


def test_api_side_never_imports_torch_or_the_worker(tmp_path: Path) -> None:
    code = (
        "import sys; from core.queue import enqueue_merge, broker_ping; "
        "enqueue_merge('merge-1'); assert broker_ping(); "
        "bad = [m for m in ('torch', 'worker.tasks', 'open_clip') if m in sys.modules]; "
        "assert not bad, bad"
    )
    env = {**os.environ, "CALM_BROKER_URL": "filesystem://", "CALM_BROKER_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_unreachable_redis_is_reported_not_hung(monkeypatch: pytest.MonkeyPatch) -> None:
    use_settings(monkeypatch, broker_url="redis://127.0.0.1:1/0")
    start = time.monotonic()
    assert queue.broker_ping(timeout_s=1.0) is False
    with pytest.raises(queue.QueueUnavailable):
        queue.enqueue_merge("merge-x")
    assert time.monotonic() - start < 30
    use_settings(monkeypatch)


def test_redis_visibility_timeout_and_enqueue(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import redis

    use_settings(monkeypatch, broker_url=redis_url, visibility_timeout_s=7200, job_time_limit_s=3600)
    conf = queue.get_app().conf
    assert conf.broker_transport_options["visibility_timeout"] == 7200
    assert queue.broker_ping()
    r = redis.Redis.from_url(redis_url)
    r.delete("merges")
    queue.enqueue_merge("merge-redis")
    raw = r.lpop("merges")
    assert raw is not None and json.loads(raw)["headers"]["task"] == "calm.run_merge"
    use_settings(monkeypatch)


def test_worker_app_delivery_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    use_settings(monkeypatch, job_time_limit_s=1234, broker_url="filesystem://")
    from worker.celery_app import create_worker_app

    app = create_worker_app()
    c = app.conf
    # A lost pool process: the job is requeued by worker.lifecycle, not by redelivery.
    assert (c.task_acks_late, c.task_reject_on_worker_lost, c.worker_prefetch_multiplier) == (
        True, False, 1)  # fmt: skip
    assert (c.task_soft_time_limit, c.task_time_limit) == (1234, 1234 + 60)
    assert c.task_default_queue == "merges"
    import worker.tasks  # noqa: F401  (registers the task on the module-level app)
    from worker.celery_app import app as module_app

    assert "calm.run_merge" in module_app.tasks
    use_settings(monkeypatch)
