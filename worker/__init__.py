"""Celery worker: `celery -A worker.celery_app worker -Q merges --concurrency 1`.

Thin by design: claim the job row, build a `calm` spec from it, run `calm.merge` with progress
and cancellation hooks, store the artifacts atomically, record masks/evaluations, finish.
"""
