"""Black-box hostile run against a live instance: ~200 hostile, malformed and fault cases.

Starts the embedded service (uvicorn API + Celery worker, SQLite, filesystem broker) in a
temporary folder, or uses PostgreSQL + Redis with --database-url / --broker-url, and sends:
hostile uploads (multipart and raw), hostile merge requests, auth and tenancy probes, request
limits, malformed JSON and headers, clients that disconnect mid-upload, and a few valid edge
requests that must then succeed in the worker. Reports:

- responses_5xx: responses with status >= 500 (target 0);
- wrong_status: responses whose status or code differ from the expected (target 0);
- accepted_then_failed: accepted jobs that then failed in the worker (target 0);
- leftovers: rows or blobs that no accepted input explains, temp files (target 0);
- api_rss_mib: the API process's resident memory after each round (flat).

    PYTHONPATH=$PWD .venv/bin/python -m bench.hostile [--rounds 3] [--json bench/results/hostile.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from bench.hostile_inputs import Case, build_cases, valid_files  # noqa: E402
from service.embedded import api_command, embedded_env, wait_healthy, worker_command  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def create_key(env: dict[str, str], name: str) -> str:
    out = subprocess.run([sys.executable, "-m", "service.cli", "create-tenant", name], env=env,
                         capture_output=True, text=True, check=True, cwd=ROOT)  # fmt: skip
    return out.stdout.strip().split()[-1]


def run_case(client: httpx.Client, case: Case) -> dict[str, Any]:
    try:
        r = case.send(client)
    except httpx.TransportError as e:  # a dropped connection counts as a failure
        return {"name": case.name, "status": 599, "code": f"transport: {type(e).__name__}"}
    body: dict[str, Any] = {}
    if r.headers.get("content-type", "").startswith("application/json"):
        try:
            body = r.json()
        except ValueError:
            body = {}
    code = (body.get("error") or {}).get("code") if isinstance(body, dict) else None
    out = {"name": case.name, "status": r.status_code, "code": code}
    if r.status_code in (200, 201) and isinstance(body, dict) and body.get("object") == "merge":
        out["job"] = body["id"]
    return out


def _as_expected(r: dict[str, Any]) -> bool:
    exp = r["expect"]
    if exp == "any":
        return r["status"] < 500
    if exp == "accept":
        return r["status"] in (200, 201)
    return r["status"] == exp[0] and (exp[1] is None or r["code"] == exp[1])


def wait_jobs(client: httpx.Client, jobs: set[str], timeout_s: float) -> dict[str, str]:
    deadline, status = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        for j in jobs:
            status[j] = client.get(f"/v1/merges/{j}").json()["status"]
        if all(s in ("succeeded", "failed", "cancelled") for s in status.values()):
            break
        time.sleep(2)
    return status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds of the whole case set (memory)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--database-url", default=None)
    p.add_argument("--broker-url", default=None)
    p.add_argument("--job-timeout-s", type=float, default=900)
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "hostile.json")
    a = p.parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="calm-hostile-"))
    env = embedded_env(data, {k: v for k, v in os.environ.items() if not k.startswith("CALM_")})
    env.update({"PYTHONPATH": str(ROOT), "CALM_AUTO_MIGRATE": "true", "CALM_WORKER_DEVICE": "cpu",
                "CALM_RATE_LIMIT_PER_S": "1000", "CALM_RATE_LIMIT_BURST": "1000",
                "CALM_MAX_ACTIVE_JOBS": "100"})  # fmt: skip
    if a.database_url:
        env["CALM_DATABASE_URL"] = a.database_url
    if a.broker_url:
        env["CALM_BROKER_URL"] = a.broker_url
    keys = {who: create_key(env, f"hostile-{who}-{os.getpid()}") for who in ("a", "b")}
    url = f"http://127.0.0.1:{a.port}"
    api = subprocess.Popen(api_command("127.0.0.1", a.port), env=env, cwd=ROOT)
    worker = subprocess.Popen(worker_command("WARNING"), env=env, cwd=ROOT)
    try:
        wait_healthy(url, 120, api)
        return _run(a, url, keys, api.pid, data, env)
    finally:
        for proc in (api, worker):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _run(a: argparse.Namespace, url: str, keys: dict[str, str], api_pid: int, data: Path,
         env: dict[str, str]) -> int:  # fmt: skip
    auth = {"Authorization": f"Bearer {keys['a']}"}
    with (
        httpx.Client(base_url=url, headers=auth, timeout=120) as client,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['b']}"}, timeout=60) as other,
    ):
        ids = valid_files(client)
        cases = build_cases(ids, url, keys, other)
        results, rss = [], [rss_mib(api_pid)]
        for _ in range(a.rounds):
            round_results = [run_case(client, c) | {"expect": c.expect} for c in cases]
            results.extend(round_results)
            rss.append(rss_mib(api_pid))
        jobs = {r["job"] for r in results if "job" in r}
        status = wait_jobs(client, jobs, a.job_timeout_s)
    from bench.hostile_inputs import leftovers

    wrong = [r for r in results if not _as_expected(r)]
    report = {
        "cases": len(cases),
        "requests": len(results),
        "rounds": a.rounds,
        "responses_5xx": sum(r["status"] >= 500 for r in results),
        "wrong_status": len(wrong),
        "wrong": wrong[:20],
        "jobs_accepted": len(jobs),
        "jobs_succeeded": sum(s == "succeeded" for s in status.values()),
        "accepted_then_failed": sum(s != "succeeded" for s in status.values()),
        "leftovers": leftovers(env["CALM_DATABASE_URL"], Path(env["CALM_STORAGE_DIR"])),
        "api_rss_mib": [round(x, 1) for x in rss],
    }
    print(f"{'cases':<24}{report['cases']}\n{'requests':<24}{report['requests']}")
    for k in ("responses_5xx", "wrong_status", "jobs_accepted", "jobs_succeeded", "accepted_then_failed"):
        print(f"{k:<24}{report[k]}")
    print(f"{'leftovers':<24}{len(report['leftovers'])}  {report['leftovers'][:5]}")
    print(f"{'api_rss_mib per round':<24}{report['api_rss_mib']}")
    for w in wrong[:20]:
        print("  wrong:", w)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2) + "\n")
    ok = not (report["responses_5xx"] or wrong or report["accepted_then_failed"] or report["leftovers"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
