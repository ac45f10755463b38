"""`calm-service demo`: the whole product on a tiny suite, over HTTP, in a few minutes.

Starts the embedded service (unless one answers at --url), builds the tiny digits suite
(cached), creates a tenant, uploads base + task checkpoints + unlabeled + eval files, posts a
CALM job, follows its events with a progress bar, downloads the merged checkpoint, loads it
with open_clip, and prints the evaluation table.

This module itself is torch-free; building the suite and the open_clip load check import the
library lazily (the demo runs where the `calm` extra is installed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from calm.result_files import MERGED_FILE
from client.api import CalmClient
from client.display import report_table
from client.spec import job_body

DEMO_SEED = 0


def say(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url.rstrip('/')}/healthz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def demo_options(epochs: int) -> dict[str, Any]:
    """Library defaults, except fewer mask-training epochs (minutes on 2 CPU cores)."""
    return {"epochs": epochs}


def check_loads(path: Path, arch: str) -> int:
    """The downloaded file is a complete open_clip checkpoint of `arch` (strict load);
    returns its parameter count."""
    import open_clip
    import torch
    from safetensors.torch import load_file

    model = open_clip.create_model(arch, pretrained=str(path))
    state = load_file(str(path))
    for name, tensor in model.state_dict().items():
        if not torch.equal(tensor, state[name]):
            raise RuntimeError(f"{name} differs between the file and the loaded model")
    return sum(p.numel() for p in model.parameters())


def _start_service(a: argparse.Namespace) -> tuple[Any, str]:
    from core.admin import create_tenant
    from service.embedded import EmbeddedService

    parsed = urlparse(a.url)
    log_path = a.data_dir / "demo-service.log"
    a.data_dir.mkdir(parents=True, exist_ok=True)
    say(f"starting the embedded service on {a.url} (SQLite + files + filesystem broker under "
        f"{a.data_dir}/; logs: {log_path})")  # fmt: skip
    svc = EmbeddedService(a.data_dir, parsed.hostname or "127.0.0.1", parsed.port or 8000,
                          log=log_path.open("a"))  # fmt: skip
    svc.start()
    _, key = create_tenant(f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6}")
    say("created a tenant and its API key")
    return svc, key


def _run(a: argparse.Namespace, key: str) -> int:
    from bench.digits_suite import build_suite

    say(f"building the tiny digits suite in {a.cache_dir}/ (cached after the first run)")
    suite = build_suite("test", cache_dir=a.cache_dir, verbose=True)
    spec = suite.merge_spec("calm", options=demo_options(a.epochs), seed=DEMO_SEED,
                            baselines=["task_arithmetic"])  # fmt: skip
    with CalmClient(a.url, key) as c:
        say(f"uploading base, {len(suite.tasks)} task checkpoints, unlabeled and eval data")
        body = job_body(spec, lambda p, purpose: c.upload_file(p, purpose)["id"], find=c.file_finder(),
                        say=say)
        job = c.create_merge(body)
        say(f"merge job {job['id']} {job['status']}; following its events")
        job = c.watch(job["id"], timeout=1800)
        if job["status"] != "succeeded":
            err = job.get("error") or {}
            print(f"job {job['status']}: {err.get('code')}: {err.get('message')}", file=sys.stderr)
            return 1
        out = a.out / f"{job['id']}-{MERGED_FILE}"
        c.download_result(job["id"], out, show_progress=True)
        n = check_loads(out, suite.arch)
        say(f"downloaded {out} and loaded it with open_clip.create_model({suite.arch!r}, "
            f"pretrained=...): {n:,} parameters")  # fmt: skip
        say("evaluation (top-1 accuracy, %):")
        print(report_table(c.get_report(job["id"])), flush=True)
    return 0


def run_demo(a: argparse.Namespace) -> int:
    start = time.monotonic()
    svc, key = None, a.api_key
    if _healthy(a.url):
        if not key:
            print(f"a service already answers at {a.url}: pass its --api-key (or CALM_API_KEY), "
                  "or choose another --url port", file=sys.stderr)  # fmt: skip
            return 2
        say(f"using the running service at {a.url}")
    try:
        if svc is None and not _healthy(a.url):
            svc, key = _start_service(a)
        code = _run(a, key)
    except KeyboardInterrupt:
        code = 130
    finally:
        if svc is not None:
            say("stopping the embedded service")
            svc.stop()
    say(f"demo {'finished' if code == 0 else 'FAILED'} in {time.monotonic() - start:.0f} s")
    return code
