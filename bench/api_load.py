"""API load benchmark: `python -m bench.api_load` (loopback only, bounded, about a minute).

Starts the API (uvicorn, embedded layout in a temporary folder: SQLite, local storage, the
filesystem broker, no worker) on 127.0.0.1 and measures, in one run:

1. the raw loopback baseline: the same ~100 MB file sent over TCP and written + fsynced
   (upload), and read + received (download) — see bench.loopback;
2. single-stream throughput of the API: uploads (POST /v1/files, raw body) and downloads
   (GET /v1/files/{id}/content), as a ratio to (1);
3. concurrency: `--clients` clients each uploading, downloading and deleting `--rounds` files
   while `--pollers` clients list files and jobs and poll a job and its events: p50/p99
   latency per operation, errors, and the API process's RSS before / peak / after.

Prints a table and writes bench/results/api_load.json. Targets: 0 errors, flat RSS (the peak
within a few tens of MiB of the start, whatever the file size), throughput >= 0.5x raw.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import struct
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.loopback import CHUNK, RssSampler, Timings, Transfers, raw_download_s, raw_upload_s, rss_mb
from service.embedded import EmbeddedService

MiB = 1024**2
API_KEY = "calm_bench_api_load_0123456789abcdef"
OUT = Path(__file__).parent / "results" / "api_load.json"
TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "head_width": 8,
        "patch_size": 4}, "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 16, "heads": 2,
        "layers": 1}}  # fmt: skip
TINY_TABLE = {"visual.conv1.weight": [16, 3, 4, 4], "visual.ln_post.weight": [16], "visual.proj": [16, 32],
              "text_projection": [16, 32], "logit_scale": []}  # fmt: skip


def safetensors_file(path: Path, table: dict[str, list[int]]) -> Path:
    """A valid F32 safetensors file with the given tensor shapes (deterministic bytes)."""
    header, pos = {}, 0
    for name, shape in table.items():
        n = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [pos, pos + n]}
        pos += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    block = (np.arange(CHUNK // 4, dtype=np.float32) % 251 / 251).tobytes()  # finite values
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for start in range(0, pos, CHUNK):
            f.write(block[: min(CHUNK, pos - start)])
    return path


def timed(c: httpx.Client, t: Timings, op: str, method: str, url: str, **kw: Any) -> httpx.Response:
    start = time.perf_counter()
    r = c.request(method, url, **kw)
    t.add(op, time.perf_counter() - start)
    if r.status_code >= 400:
        t.error(op, f"{r.status_code} {r.text[:200]}")
    return r


def create_job(c: httpx.Client, folder: Path) -> str:
    """A small queued merge job to poll (tiny checkpoints; no worker runs it)."""
    ids, images = {}, {"images": [4, 3, 16, 16]}
    files = [("base", "checkpoint", TINY_TABLE), ("t0", "checkpoint", TINY_TABLE),
             ("t1", "checkpoint", TINY_TABLE), ("d0", "dataset", images), ("d1", "dataset", images)]
    for name, purpose, table in files:
        path = safetensors_file(folder / f"{name}.safetensors", table)
        r = c.post("/v1/files", params={"purpose": purpose, "filename": path.name}, content=path.read_bytes())
        ids[name] = r.raise_for_status().json()["id"]
    tasks = [{"name": f"task{i}", "checkpoint": ids[f"t{i}"], "unlabeled": ids[f"d{i}"],
              "classnames": ["a", "b"]} for i in range(2)]  # fmt: skip
    body = {"model": {"arch": "bench-tiny", "custom_config": TINY, "checkpoint": ids["base"]}, "tasks": tasks,
            "options": {"epochs": 1, "num_sequential": 1}}  # fmt: skip
    return c.post("/v1/merges", json=body).raise_for_status().json()["id"]


def single_stream(c: httpx.Client, big: Path, raw_dest: Path, repeats: int) -> dict[str, dict[str, float]]:
    """Median seconds of a raw and an API upload and download of `big`, one at a time; raw
    and API transfers alternate, so both see the same load on a shared machine."""
    t, io, raw = Timings(), Transfers(str(c.base_url), API_KEY), Timings()
    for _ in range(repeats):
        raw.add("upload", raw_upload_s(big, raw_dest))
        file_id = io.upload(big, t)
        raw.add("download", raw_download_s(big))
        if file_id:
            io.download(file_id, big.stat().st_size, t)
            c.delete(f"/v1/files/{file_id}")
    if t.errors:
        raise RuntimeError(f"single-stream transfers failed: {t.errors}")
    return {kind: {op: statistics.median(v) / 1000 for op, v in got.ms.items()}
            for kind, got in (("raw", raw), ("api", t))}  # fmt: skip


def concurrent_load(url: str, big: Path, job_id: str, a: argparse.Namespace) -> Timings:
    t, done = Timings(), threading.Event()
    size = big.stat().st_size

    def transfer_client() -> None:
        io = Transfers(url, API_KEY)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=300) as c:
            for _ in range(a.rounds):
                if file_id := io.upload(big, t):
                    io.download(file_id, size, t)
                    timed(c, t, "delete_file", "DELETE", f"/v1/files/{file_id}")

    def poller() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
            for _ in range(a.max_polls):
                if done.is_set():
                    return
                timed(c, t, "list_files", "GET", "/v1/files", params={"limit": 20})
                timed(c, t, "list_jobs", "GET", "/v1/merges", params={"limit": 20})
                timed(c, t, "get_job", "GET", f"/v1/merges/{job_id}")
                timed(c, t, "job_events", "GET", f"/v1/merges/{job_id}/events")
                time.sleep(a.poll_interval_s)

    with ThreadPoolExecutor(a.clients + a.pollers) as pool:
        polls = [pool.submit(poller) for _ in range(a.pollers)]
        for f in [pool.submit(transfer_client) for _ in range(a.clients)]:
            f.result()
        done.set()
        for f in polls:
            f.result()
    return t


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(a: argparse.Namespace, svc: EmbeddedService, big: Path, folder: Path) -> dict[str, Any]:
    assert svc.api is not None
    pid, size_mb = svc.api.pid, big.stat().st_size / MiB
    raw_dest = folder / "var" / "storage" / "raw-copy.bin"  # the API's filesystem
    with httpx.Client(base_url=svc.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=300) as c:
        job_id = create_job(c, folder)
        for _ in range(20):  # warm the routes up before "before"
            c.get(f"/v1/merges/{job_id}")
        before = rss_mb(pid)
        with RssSampler(pid) as rss:
            single = single_stream(c, big, raw_dest, a.repeats)
            start = time.perf_counter()
            t = concurrent_load(svc.url, big, job_id, a)
            wall = time.perf_counter() - start
    time.sleep(2.0)
    after, peak = rss_mb(pid), max(rss.peak, rss_mb(pid, "VmHWM"))
    raw, api = single["raw"], single["api"]
    moved = 2 * a.clients * a.rounds * size_mb
    ratio = {op: round(raw[op] / api[op], 3) for op in ("upload", "download")}
    return {
        "file_mb": round(size_mb, 1), "clients": a.clients, "rounds": a.rounds, "pollers": a.pollers,
        "raw_mb_s": {op: round(size_mb / s, 1) for op, s in raw.items()},
        "api_mb_s": {op: round(size_mb / s, 1) for op, s in api.items()},
        "throughput_ratio": ratio,
        "concurrent_mb_s": round(moved / wall, 1), "concurrent_wall_s": round(wall, 1),
        "latency": t.summary(), "errors": len(t.errors), "error_samples": t.errors[:5],
        "rss_mb": {"before": round(before, 1), "peak": round(peak, 1), "after": round(after, 1)},
        "rss_growth_mb": round(peak - before, 1),
        "load_avg_1m": round(os.getloadavg()[0], 1), "cpus": os.cpu_count(),
        "targets": {"zero_errors": not t.errors, "flat_rss": peak - before < 64,
                    "throughput_ge_half_raw": min(ratio.values()) >= 0.5},
    }  # fmt: skip


def run(a: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="calm-api-load-") as tmp:
        folder = Path(tmp)
        big = safetensors_file(folder / "big.safetensors", {"visual.proj": [a.mb * MiB // 4]})
        # One tenant plays every client: the per-tenant rate limit (a policy, tested elsewhere)
        # is lifted so that what is measured is the API's own latency and throughput.
        ours = {"CALM_BOOTSTRAP_API_KEY": API_KEY, "CALM_MAX_UPLOAD_BYTES": str(2 * big.stat().st_size),
                "CALM_RATE_LIMIT_PER_S": "100000", "CALM_RATE_LIMIT_BURST": "100000"}
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("CALM_")}, **ours}
        with (folder / "api.log").open("w") as log, EmbeddedService(
            folder / "var", port=free_port(), worker=False, log=log, env=env
        ) as svc:
            return measure(a, svc, big, folder)


def print_table(r: dict[str, Any]) -> None:
    print(f"API load: {r['clients']} clients x {r['rounds']} rounds of a {r['file_mb']} MiB upload + "
          f"download, {r['pollers']} pollers (loopback)\n")  # fmt: skip
    print(f"{'operation':<14}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}")
    for op, v in r["latency"].items():
        print(f"{op:<14}{v['n']:>6}{v['p50_ms']:>10.1f}{v['p99_ms']:>10.1f}")
    print(f"\n{'throughput':<14}{'raw MB/s':>10}{'API MB/s':>10}{'ratio':>8}")
    for op in ("upload", "download"):
        print(f"{op:<14}{r['raw_mb_s'][op]:>10.1f}{r['api_mb_s'][op]:>10.1f}{r['throughput_ratio'][op]:>8.2f}")
    rss = r["rss_mb"]
    print(f"\nconcurrent transfers: {r['concurrent_mb_s']} MB/s in total over {r['concurrent_wall_s']} s")
    print(f"errors: {r['errors']}   API RSS MiB: before {rss['before']}, peak {rss['peak']}, "
          f"after {rss['after']} (growth {r['rss_growth_mb']})")  # fmt: skip
    print(f"machine: {r['cpus']} CPUs, load average {r['load_avg_1m']} during the run")
    print("targets: " + ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in r["targets"].items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.api_load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--mb", type=int, default=100, help="size of each transferred file (MiB)")
    p.add_argument("--clients", type=int, default=4, help="concurrent upload/download clients")
    p.add_argument("--rounds", type=int, default=2, help="files each client uploads and downloads")
    p.add_argument("--pollers", type=int, default=4, help="clients listing and polling jobs")
    p.add_argument("--poll-interval-s", type=float, default=0.05)
    p.add_argument("--max-polls", type=int, default=2000, help="bound on each poller's loop")
    p.add_argument("--repeats", type=int, default=5, help="single-stream and raw repetitions")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    result = run(a)
    print_table(result)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {a.out}")
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
