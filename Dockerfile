# syntax=docker/dockerfile:1.7
# Two images from one file:
#   docker build --target api    -t calm-api .     # FastAPI + uvicorn, no torch (~200 MB)
#   docker build --target worker -t calm-worker .  # Celery worker with CUDA torch
# docker-compose.yml builds both.

ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------------------------------------
# base: Python, an unprivileged user, the shared data directory and the project's base deps.
FROM python:${PYTHON_VERSION}-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CALM_STORAGE_DIR=/data/storage \
    CALM_STORAGE_CACHE_DIR=/data/cache
WORKDIR /app
# /data: local storage (storage_backend=local) or the cache of object-storage blobs (s3).
RUN useradd --create-home --uid 10001 calm && mkdir -p /data/storage /data/cache && chown -R calm /data

# Prints pyproject.toml's requirements for the base plus the named extras, expanding
# self-references such as "calm-merge[calm,api]", so dependency layers are cached apart
# from the source.
COPY <<'PY' /usr/local/bin/pyproject-deps
#!/usr/bin/env python3
import re, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project.get("optional-dependencies", {})
self_ref = re.compile(re.escape(project["name"]) + r"\[(.+)\]")
def expand(reqs):
    for req in reqs:
        m = self_ref.fullmatch(req.replace(" ", ""))
        if m:
            for extra in m.group(1).split(","):
                yield from expand(extras[extra])
        else:
            yield req
wanted = list(project["dependencies"]) + [r for e in sys.argv[1:] for r in extras[e]]
print("\n".join(sorted(set(expand(wanted)))))
PY
RUN chmod +x /usr/local/bin/pyproject-deps
COPY pyproject.toml ./
RUN pyproject-deps > /tmp/base.txt && pip install -r /tmp/base.txt

# ---------------------------------------------------------------------------------------------
# api: the web API. No torch: it enqueues tasks by name and never imports the worker.
FROM base AS api
# Flat memory while streaming uploads/downloads from threads (see service/embedded.py).
ENV MALLOC_ARENA_MAX=2 \
    MALLOC_MMAP_THRESHOLD_=1048576
RUN pyproject-deps api > /tmp/api.txt && pip install -r /tmp/api.txt
COPY . .
RUN pip install --no-deps . && ! python -c "import torch" 2>/dev/null
USER calm
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"
CMD ["uvicorn", "api.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", \
     "--proxy-headers", "--forwarded-allow-ips", "*"]

# ---------------------------------------------------------------------------------------------
# worker: SIGTERM (docker stop) lets a running merge finish within CALM_WORKER_SHUTDOWN_GRACE_S,
# then hands it back to the queue; keep the orchestrator's stop grace period longer than that.
# CUDA torch from the PyTorch wheel index (the wheels bundle the CUDA runtime, so the
# host needs only the NVIDIA driver + container toolkit), then the rest of the worker extra.
FROM base AS worker
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN pyproject-deps worker > /tmp/worker.txt \
    && grep -E '^(torch|torchvision)([<>=!~ ]|$)' /tmp/worker.txt > /tmp/torch.txt \
    && pip install --index-url "${TORCH_INDEX_URL}" -r /tmp/torch.txt \
    && pip install -r /tmp/worker.txt
COPY . .
RUN pip install --no-deps .
USER calm
ENV CALM_WORKER_DEVICE=auto
HEALTHCHECK --interval=60s --timeout=20s --start-period=60s --retries=3 \
    CMD celery -A worker.celery_app inspect ping -d "celery@$(hostname)" --timeout 10 >/dev/null
CMD ["celery", "-A", "worker.celery_app", "worker", "-Q", "merges", "--concurrency", "1", \
     "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
