"""Service configuration from the environment (prefix `CALM_`), e.g. CALM_DATABASE_URL."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from calm.run_options import DEFAULT_MAX_IMAGES

GiB = 1024**3
MiB = 1024**2
REAPER_MAX_INTERVAL_S = 30.0  # so that a dead worker is noticed within stale_job_after_s + 30 s


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CALM_", env_file=".env", extra="ignore")

    # Where things live.
    database_url: str = Field(
        default="sqlite:///./var/calm.db",
        description="SQLAlchemy URL: sqlite:///path (embedded) or postgresql+psycopg://...",
    )
    storage_dir: Path = Field(default=Path("./var/storage"), description="Local file storage root.")
    # Object storage (storage_backend="s3"): any S3-compatible service (AWS S3, MinIO, Ceph...).
    storage_backend: Literal["local", "s3"] = Field(
        default="local", description="'local' (files under storage_dir) or 's3' (a bucket)."
    )
    s3_bucket: str | None = Field(default=None, description="Bucket of the s3 backend.")
    s3_prefix: str = Field(default="", description="Key prefix inside the bucket, e.g. 'calm/'.")
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint, e.g. http://minio:9000 (None: AWS)."
    )
    s3_region: str = Field(default="us-east-1")
    s3_access_key_id: str | None = Field(default=None, description="None: boto3's usual chain.")
    s3_secret_access_key: SecretStr | None = None
    s3_part_bytes: int = Field(
        default=16 * MiB, ge=5 * MiB, description="Part size of streaming multipart uploads."
    )
    s3_create_bucket: bool = Field(default=False, description="Create the bucket if missing.")
    storage_cache_dir: Path = Field(
        default=Path("./var/cache"), description="s3 backend: local copies of blobs (worker inputs)."
    )
    storage_cache_max_bytes: int = Field(
        default=50 * GiB, ge=0, description="s3 backend: the local cache is trimmed to this."
    )
    # The queue.
    broker_url: str = Field(
        default="filesystem://",
        description="Celery broker: 'filesystem://' (embedded, folders under broker_dir) or "
        "redis://host:6379/0.",
    )
    broker_dir: Path = Field(default=Path("./var/broker"), description="Embedded broker folders.")
    visibility_timeout_s: int = Field(
        default=6 * 3600, description="Redis visibility timeout; longer than the longest job."
    )
    job_time_limit_s: int = Field(default=5 * 3600, description="Hard time limit of one merge.")
    worker_device: str = Field(
        default="auto", description="The workers' device: 'auto', 'cpu', 'cuda' or 'cuda:N' (a "
        "request's run.device is not used).")
    # Limits.
    max_upload_bytes: int = Field(default=4 * GiB, gt=0, description="Largest accepted upload.")
    max_files_per_job: int = Field(default=64, ge=3, description="File references per job.")
    max_tasks_per_job: int = Field(default=32, ge=2)
    # Upload checks (keep at or below the worker's calm.data.DataLimits).
    max_archive_members: int = Field(default=200_000, ge=1, description="Members per zip/tar/npz.")
    max_archive_bytes: int = Field(
        default=4 * GiB, ge=1024, description="Uncompressed bytes per archive / tensor data file."
    )
    max_compression_ratio: float = Field(
        default=100.0, ge=1, description="Per archive member (over 1 MiB): refuses zip bombs."
    )
    max_images: int = Field(
        default=DEFAULT_MAX_IMAGES, ge=1,
        description="Images per data set: checked at upload, and the workers' cap (a request's "
        "run.max_images may only lower it).")
    max_image_bytes: int = Field(default=64 * 1024**2, ge=1024, description="Bytes per image file.")
    max_image_pixels: int = Field(default=25_000_000, ge=1, description="Pixels per image.")
    max_safetensors_header_bytes: int = Field(default=16 * 1024**2, ge=1024)
    max_tensors: int = Field(default=100_000, ge=1, description="Tensors per safetensors file.")
    # Request limits.
    max_json_body_bytes: int = Field(
        default=1024**2, ge=1024, description="JSON request bodies (POST /v1/merges, ...)."
    )
    max_form_bytes: int = Field(
        default=64 * 1024, ge=1024, description="All non-file fields of one multipart upload."
    )
    # Per-tenant quotas and rate limits (a tenant row may override each; 429 + Retry-After).
    rate_limit_per_s: float = Field(
        default=20.0, gt=0, description="Sustained requests per second per tenant (per API process)."
    )
    rate_limit_burst: int = Field(default=40, ge=1, description="Requests a tenant may burst.")
    max_active_jobs: int = Field(
        default=8, ge=1, description="Unfinished (queued or running) merge jobs per tenant."
    )
    max_stored_bytes: int = Field(
        default=200 * GiB, ge=1, description="Bytes of files plus pending uploads per tenant."
    )
    quota_retry_after_s: int = Field(
        default=30, ge=1, description="Retry-After of a 429 for the job and storage quotas."
    )
    upload_part_bytes: int = Field(
        default=64 * 1024**2, ge=1024, description="Part size suggested for multi-part uploads."
    )
    upload_expiry_s: int = Field(
        default=24 * 3600, ge=60, description="A multi-part upload must complete within this."
    )
    # Jobs.
    progress_min_interval_s: float = Field(
        default=1.0, ge=0, description="Progress writes per job are at most this frequent."
    )
    stale_job_after_s: float = Field(
        default=900.0, ge=60, description="A running job silent this long lost its worker (worker_lost)."
    )
    max_attempts: int = Field(
        default=2, ge=1, le=20, description="Runs of a job whose worker died before it fails worker_lost."
    )
    reaper_interval_s: float | None = Field(
        default=None, gt=0, description="Reaper period; default stale_job_after_s / 2, at most 30 s."
    )
    outbox_grace_s: float = Field(
        default=10.0, ge=0, description="A committed job unpublished this long is published by the sweeper."
    )
    worker_shutdown_grace_s: float = Field(
        default=30.0, ge=0, description="On SIGTERM a job may finish within this, else it is handed back."
    )
    sse_poll_interval_s: float = Field(default=0.5, gt=0, description="Event stream DB poll.")
    sse_heartbeat_s: float = Field(default=15.0, gt=0)
    auto_migrate: bool = Field(default=False, description="Run `alembic upgrade head` at startup.")
    # Bootstrap: a tenant + API key created at startup if set (embedded demo convenience).
    bootstrap_api_key: str | None = Field(default=None, min_length=16)
    bootstrap_tenant: str = "default"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def reaper_period_s(self) -> float:
        """How often the reaper sweeps: reaper_interval_s, else stale_job_after_s / 2 capped at 30 s."""
        if self.reaper_interval_s is not None:
            return self.reaper_interval_s
        return min(self.stale_job_after_s / 2, REAPER_MAX_INTERVAL_S)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (read once from the environment)."""
    return Settings()
