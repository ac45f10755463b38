"""`calm-client`: use the merging service from a shell.

    export CALM_API_URL=http://127.0.0.1:8000 CALM_API_KEY=calm_...
    calm-client upload base.safetensors --purpose checkpoint
    calm-client upload big.safetensors --purpose checkpoint   # > 256 MiB: in parts, resumable
    calm-client merge create spec.yaml          # validates, uploads what the service lacks, posts, watches
    calm-client merge create spec.yaml --dry-run  # the service's checks and resolved plan; no job
    calm-client merge list --status running --metadata project=vision
    calm-client watch merge-...
    calm-client events merge-... --follow        # JSON lines; resumes a dropped stream
    calm-client download merge-... merged.safetensors
    calm-client report merge-...

Progress goes to stderr: a bar on a terminal, timestamped plain lines when stderr is a file or a
pipe, JSON lines with `--progress json` (time, stage, fraction, message, metrics).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from calm.progress import PROGRESS_HELP, PROGRESS_MODES, resolve_mode
from calm.spec_errors import SpecError
from client.api import PART_SIZE, RESUMABLE_ABOVE, ApiError, CalmClient
from client.display import report_table
from client.spec import job_body, load_spec


def _client(args: argparse.Namespace) -> CalmClient:
    if not args.api_key:
        sys.exit("calm-client: give --api-key or set CALM_API_KEY")
    return CalmClient(args.url, args.api_key, progress=resolve_mode(args.progress, sys.stderr))


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _upload(c: CalmClient, a: argparse.Namespace, path: Path, purpose: str) -> dict[str, Any]:
    return c.upload_file(
        path, purpose, show_progress=not a.quiet, resumable_above=a.resumable_above,
        state_dir=a.state_dir, part_size=a.part_size,
    )  # fmt: skip


def cmd_upload(c: CalmClient, a: argparse.Namespace) -> int:
    _print(_upload(c, a, a.path, a.purpose))
    return 0


def cmd_merge_create(c: CalmClient, a: argparse.Namespace) -> int:
    """Validate the spec, upload what the service lacks, then create (or dry-run) the job."""
    request = load_spec(a.spec)  # before any upload: SpecError lists every problem
    say = (lambda _: None) if a.quiet else (lambda msg: print(msg, file=sys.stderr))
    for line in request.describe():
        say(f"plan: {line}")

    def upload(path: Path, purpose: str) -> str:
        uploaded = _upload(c, a, path, purpose)
        note = (uploaded.get("metadata") or {}).get("note")
        if note:
            say(f"warning: {path.name}: {note}")
        return uploaded["id"]

    find = None if a.no_reuse else c.file_finder()
    body = job_body(request, upload, Path(a.spec).parent, find=find, say=say, dry_run=a.dry_run)
    job = c.create_merge(body)
    if a.dry_run:
        for note in job.get("notes") or []:
            print(f"note: {note}", file=sys.stderr)
        _print(job)
        return 0
    print(f"created {job['id']} ({job['status']})", file=sys.stderr)
    if a.no_watch:
        _print(job)
        return 0
    return _finished(c, c.watch(job["id"], show=not a.quiet))


def _finished(c: CalmClient, job: dict[str, Any]) -> int:
    if job["status"] == "succeeded":
        print(report_table(c.get_report(job["id"])))
        return 0
    error = job.get("error") or {}
    print(f"{job['id']} {job['status']}: {error.get('code', '')} {error.get('message', '')}",
          file=sys.stderr)  # fmt: skip
    return 1


def key_value(text: str) -> tuple[str, str]:
    """"KEY=VALUE" -> (KEY, VALUE)."""
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"not KEY=VALUE: {text!r}")
    return key, value


def cmd_merge_list(c: CalmClient, a: argparse.Namespace) -> int:
    page = c.list_merges(after=a.after, limit=a.limit, status=a.status, metadata=dict(a.metadata or []))
    if a.json:
        _print(page)
        return 0
    for j in page["data"]:
        labels = " ".join(f"{k}={v}" for k, v in j["metadata"].items())
        print(f"{j['id']}  {j['status']:<10} {j['method']:<16} {j['created_at']}  {labels}".rstrip())
    if page["has_more"]:
        print(f"more: --after {page['next_cursor']}", file=sys.stderr)
    return 0


def cmd_events(c: CalmClient, a: argparse.Namespace) -> int:
    """The job's events as JSON lines: one page, or (--follow) the live stream until the end."""
    if not a.follow:
        page = c.events(a.job_id, after=a.after, limit=a.limit)
        for e in page["data"]:
            print(json.dumps(e, default=str))
        print(f"next: --after {page['next_cursor']}", file=sys.stderr)
        return 0
    for kind, data in c.stream_events(a.job_id, after=a.after):
        print(json.dumps({"event": kind, "data": data}, default=str), flush=True)
    return 0


def cmd_watch(c: CalmClient, a: argparse.Namespace) -> int:
    return _finished(c, c.watch(a.job_id, show=not a.quiet))


def cmd_download(c: CalmClient, a: argparse.Namespace) -> int:
    out = c.download_result(a.job_id, a.out, what=a.what, show_progress=not a.quiet)
    print(out)
    return 0


def cmd_report(c: CalmClient, a: argparse.Namespace) -> int:
    report = c.get_report(a.job_id)
    _print(report) if a.json else print(report_table(report))
    return 0


def cmd_status(c: CalmClient, a: argparse.Namespace) -> int:
    _print(c.get_merge(a.job_id))
    return 0


def cmd_cancel(c: CalmClient, a: argparse.Namespace) -> int:
    _print(c.cancel(a.job_id))
    return 0


def byte_count(text: str) -> int:
    """"1048576", "512K", "256M", "4G" (powers of 1024) -> bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        n = int(t[:-1]) * units[t[-1]] if t and t[-1] in units else int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r} (e.g. 1048576, 256M, 4G)") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"a byte count cannot be negative: {text!r}")
    return n


def _upload_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--resumable-above", type=byte_count, default=RESUMABLE_ABOVE, metavar="BYTES",
                    help="upload files larger than this in parts, resumably (default 256M; "
                         "0: always)")  # fmt: skip
    sp.add_argument("--state-dir", type=Path, default=None,
                    help="keep resumable-upload state here (default: <file>.upload.json next to "
                         "the file)")  # fmt: skip
    sp.add_argument("--part-size", type=byte_count, default=PART_SIZE, metavar="BYTES",
                    help="part size of resumable uploads (default 64M)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="calm-client", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--url", default=os.environ.get("CALM_API_URL", "http://127.0.0.1:8000"))
    p.add_argument("--api-key", default=os.environ.get("CALM_API_KEY"))
    p.add_argument("-q", "--quiet", action="store_true", help="no progress at all")
    p.add_argument("--progress", choices=PROGRESS_MODES, default="auto", help=PROGRESS_HELP)
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upload", help="upload a file")
    up.add_argument("path", type=Path)
    up.add_argument("--purpose", required=True, choices=["checkpoint", "dataset", "head", "eval"])
    _upload_options(up)
    up.set_defaults(func=cmd_upload)
    merge = sub.add_parser("merge", help="merge jobs").add_subparsers(dest="merge", required=True)
    create = merge.add_parser("create", help="upload a spec's files and create the job")
    create.add_argument("spec", type=Path, help="merge spec YAML with local file paths")
    create.add_argument("--no-watch", action="store_true")
    create.add_argument("--dry-run", action="store_true",
                        help="validate on the service and print the resolved plan; no job")
    create.add_argument("--no-reuse", action="store_true",
                        help="upload every file, even those the service has (same sha256)")
    _upload_options(create)
    create.set_defaults(func=cmd_merge_create)
    listing = merge.add_parser("list", help="list your jobs, newest first")
    listing.add_argument("--status", action="append",
                         help="only jobs in this status, e.g. running (repeat for several)")  # fmt: skip
    listing.add_argument("--metadata", action="append", type=key_value, metavar="KEY=VALUE",
                         help="only jobs with this metadata label (repeat: all must match)")  # fmt: skip
    listing.add_argument("--after", help="the cursor printed after the previous page")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_merge_list)
    ev = sub.add_parser("events", help="a job's events as JSON lines")
    ev.add_argument("job_id")
    ev.add_argument("--after", default="0", help="only events after this cursor (an event seq)")
    ev.add_argument("--limit", type=int, default=100)
    ev.add_argument("--follow", action="store_true",
                    help="stream them live until the job ends (a dropped stream is resumed)")
    ev.set_defaults(func=cmd_events)
    for name, func, doc in (("watch", cmd_watch, "follow a job with a progress bar"),
                            ("status", cmd_status, "print a job"),
                            ("cancel", cmd_cancel, "cancel a job")):  # fmt: skip
        sp = sub.add_parser(name, help=doc)
        sp.add_argument("job_id")
        sp.set_defaults(func=func)
    dl = sub.add_parser("download", help="download the merged checkpoint (resumable)")
    dl.add_argument("job_id")
    dl.add_argument("out", type=Path)
    dl.add_argument("--what", choices=["result", "masks"], default="result")
    dl.set_defaults(func=cmd_download)
    rep = sub.add_parser("report", help="print the evaluation table")
    rep.add_argument("job_id")
    rep.add_argument("--json", action="store_true")
    rep.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _client(args) as c:
            return args.func(c, args)
    except SpecError as e:
        where = f" {args.spec}" if hasattr(args, "spec") else ""
        print(f"calm-client: invalid spec{where}:" + "".join(f"\n  {p}" for p in e.problems), file=sys.stderr)
        return 2
    except ApiError as e:
        print(f"calm-client: {e}", file=sys.stderr)
        return 2
    except httpx.TransportError as e:
        print(f"calm-client: cannot reach the service at {args.url} ({type(e).__name__}: {e}); is it "
              "running? (`calm-service serve` starts one; --url or CALM_API_URL point elsewhere)",
              file=sys.stderr)  # fmt: skip
        return 2
    except (OSError, ValueError, TimeoutError) as e:
        print(f"calm-client: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
