"""The production layout: docker-compose.yml and the multi-stage Dockerfile are consistent.

Structural checks always run (pyyaml); `docker compose config` / `docker-compose config`
also validates the file against the Compose schema when either tool is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
REQUIRED_ENV = {"CALM_DATABASE_URL", "CALM_BROKER_URL", "CALM_STORAGE_DIR"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def test_compose_config_validates() -> None:
    cmd = _compose_command()
    if cmd is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    out = subprocess.run(
        [*cmd, "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    rendered = yaml.safe_load(out.stdout)
    assert set(rendered["services"]) >= {"postgres", "redis", "minio", "migrate", "api", "worker", "beat"}


def test_services_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"postgres", "redis", "minio", "migrate", "api", "worker", "beat"}
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]
    assert services["migrate"].get("restart", "no") == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    api_deps = services["api"]["depends_on"]
    assert api_deps["migrate"]["condition"] == "service_completed_successfully"
    assert api_deps["redis"]["condition"] == "service_healthy"
    assert api_deps["postgres"]["condition"] == "service_healthy"
    worker_deps = services["worker"]["depends_on"]
    assert worker_deps["migrate"]["condition"] == "service_completed_successfully"
    assert worker_deps["redis"]["condition"] == "service_healthy"


def test_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("postgres", "redis", "api"):
        assert "test" in services[name].get("healthcheck", {}), f"{name} has no healthcheck"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "ping" in " ".join(services["redis"]["healthcheck"]["test"])
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])


def test_worker_reserves_a_gpu_and_scales(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    deploy = worker["deploy"]
    devices = deploy["resources"]["reservations"]["devices"]
    assert any(
        d["driver"] == "nvidia" and d["count"] == 1 and "gpu" in d["capabilities"] for d in devices
    )
    assert "replicas" in deploy
    assert "container_name" not in worker, "a fixed container name prevents scaling"
    assert "ports" not in worker
    cmd = " ".join(worker["command"])
    assert "-Q merges" in cmd and "--concurrency 1" in cmd


def test_object_storage_and_environment(compose: dict[str, Any]) -> None:
    """api, workers and beat share the database, broker and bucket (MinIO), and nothing on
    disk but their own caches: a worker can run on another machine."""
    services = compose["services"]
    envs = {name: services[name]["environment"] for name in ("api", "worker", "beat")}
    for name, env in envs.items():
        assert set(env) >= REQUIRED_ENV, f"{name} misses {REQUIRED_ENV - set(env)}"
        assert env["CALM_STORAGE_BACKEND"] == "s3" and env["CALM_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert services[name]["depends_on"]["minio"]["condition"] == "service_healthy"
        cache = next(v for v in services[name]["volumes"] if not v.startswith((".", "/")))
        assert cache.split(":")[0] in compose["volumes"]
        assert env["CALM_STORAGE_CACHE_DIR"].startswith(cache.split(":")[1])
    for key in ("CALM_DATABASE_URL", "CALM_BROKER_URL", "CALM_S3_BUCKET", "CALM_S3_ACCESS_KEY_ID"):
        assert len({env[key] for env in envs.values()}) == 1, key
    assert envs["api"]["CALM_BROKER_URL"].startswith("redis://")
    assert envs["api"]["CALM_DATABASE_URL"].startswith("postgresql")
    minio = services["minio"]
    assert "server" in minio["command"] and "test" in minio["healthcheck"]
    assert minio["environment"]["MINIO_ROOT_USER"] == envs["api"]["CALM_S3_ACCESS_KEY_ID"]
    worker_env = envs["worker"]
    assert int(worker_env["CALM_VISIBILITY_TIMEOUT_S"]) > int(worker_env["CALM_JOB_TIME_LIMIT_S"])


def test_beat_sweeps_and_workers_hand_back_before_being_killed(compose: dict[str, Any]) -> None:
    services = compose["services"]
    beat = services["beat"]
    cmd = " ".join(beat["command"])
    assert "-A worker.beat" in cmd and "--beat" in cmd and "-Q housekeeping" in cmd
    assert beat["build"]["target"] == "api" and beat["deploy"]["replicas"] == 1 and "ports" not in beat
    worker = services["worker"]
    grace = float(worker["environment"]["CALM_WORKER_SHUTDOWN_GRACE_S"])
    assert grace + 30 <= int(worker["stop_grace_period"].rstrip("m")) * 60


def test_api_and_worker_images_come_from_their_targets(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["api"]["build"]["target"] == "api"
    assert services["migrate"]["build"]["target"] == "api"
    assert services["worker"]["build"]["target"] == "worker"
    assert services["api"]["ports"] and "8000" in str(services["api"]["ports"][0])


def test_dockerfile_has_api_and_worker_targets() -> None:
    text = DOCKERFILE.read_text()
    stages = {alias for _, alias in re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, re.M)}
    assert stages >= {"base", "api", "worker"}
    blocks = re.split(r"^FROM\s", text, flags=re.M)
    api = next(b for b in blocks if re.match(r"\S+\s+AS\s+api\b", b))
    worker = next(b for b in blocks if re.match(r"\S+\s+AS\s+worker\b", b))
    api_code = "\n".join(ln for ln in api.splitlines() if not ln.lstrip().startswith("#"))
    assert "pyproject-deps api" in api and "torch" not in api_code.replace('import torch"', "")
    assert "HEALTHCHECK" in api and "/healthz" in api and "uvicorn" in api
    assert "download.pytorch.org/whl/cu" in worker and "pyproject-deps worker" in worker
    assert "celery" in worker and "-Q" in worker and "merges" in worker
    assert (ROOT / ".dockerignore").exists()
