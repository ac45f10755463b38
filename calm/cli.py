"""`calm-merge`: run a merge from a YAML/JSON spec, validate a spec, convert checkpoints.

    calm-merge run spec.yaml --out out/ [--device auto|cpu|cuda] [--seed N] [--progress MODE]
    calm-merge validate spec.yaml              # every check the merge would make, and the plan
    calm-merge convert model.pt model.safetensors [--trust-pickle]
    calm-merge methods [NAME]                  # the methods, or one method's options and defaults

The spec file is the schema of calm.spec.MergeRequest (docs/spec.md), the same YAML
`calm-client merge create` takes and the same body `POST /v1/merges` takes (with file ids).

Progress goes to stderr: a bar on a terminal, timestamped plain lines when stderr is a file or
a pipe, or JSON lines with `--progress json` (calm.progress). Warnings (files skipped in a data
folder, ...) go to stderr too.

Exit codes: 0 ok, 1 unexpected failure, 2 bad input (spec, files, data), 130 cancelled.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from calm.errors import CalmError, MergeCancelled
from calm.progress import PROGRESS_HELP, PROGRESS_MODES, LineProgress, Progress, resolve_mode
from calm.spec import MergeRequest
from calm.spec_errors import SpecError
from calm.spec_file import load_request

BAD_INPUT, CANCELLED = 2, 130


def _fail(msg: str) -> int:
    print(f"calm-merge: error: {msg}", file=sys.stderr)
    return BAD_INPUT


def load_spec(path: Path, overrides: dict[str, Any] | None = None,
              run_overrides: dict[str, Any] | None = None) -> MergeRequest:
    """Parse a YAML/JSON spec file (calm.spec_file): relative paths resolve against its folder,
    `model.custom_config` may be a JSON file's path, `run:` holds the run options. `overrides`
    (e.g. seed) and `run_overrides` (e.g. device) win where not None. Raises SpecError."""
    return load_request(path, overrides, run_overrides)


def _progress(mode: str) -> tuple[Callable[[Progress], None], Callable[[], None]]:
    """(show, close) for `--progress`: a tqdm bar, or plain / JSON lines, on stderr."""
    resolved = resolve_mode(mode, sys.stderr)
    if resolved != "bar":
        lines = LineProgress(sys.stderr, json_lines=resolved == "json")
        return lines, lines.close
    from tqdm import tqdm

    bar = tqdm(total=100, unit="%", file=sys.stderr,
               bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}]{postfix}")

    def update(p: Progress) -> None:
        bar.set_description(p.stage, refresh=False)
        bar.set_postfix({k: f"{v:.4g}" for k, v in p.metrics.items()}, refresh=False)
        bar.update(max(0.0, 100 * p.fraction - bar.n))

    return update, bar.close


def summary_table(report: dict[str, Any]) -> str:
    """Per-task accuracy (%) by model kind, with average (%) and normalized rows."""
    acc: dict[str, dict[str, float]] = report.get("accuracy") or {}
    order = {"zero_shot": 0, "individual": 1, "merged": 2}  # then baselines, as given
    kinds = sorted((k for k, v in acc.items() if isinstance(v, dict) and v), key=lambda k: order.get(k, 3))
    if not kinds:
        return f"method {report.get('method', '?')}: no labelled eval data, no accuracy table"
    tasks = list(dict.fromkeys(t for k in kinds for t in acc[k]))
    first = max(12, *(len(t) + 2 for t in tasks))
    widths = {k: max(10, len(k) + 2) for k in kinds}

    def row(label: str, values: dict[str, float], fmt: str) -> str:
        cells = (f"{format(values[k], fmt) if k in values else '-':>{w}}" for k, w in widths.items())
        return f"{label:<{first}}" + "".join(cells)

    lines = [f"{'task':<{first}}" + "".join(f"{k:>{w}}" for k, w in widths.items())]
    lines += [row(t, {k: 100 * acc[k][t] for k in kinds if t in acc[k]}, ".2f") for t in tasks]
    average = {k: 100 * v for k, v in (report.get("average") or {}).items()}
    if average:
        lines.append(row("average", average, ".2f"))
    if report.get("normalized"):
        lines.append(row("normalized", report["normalized"], ".3f"))
    return "\n".join(lines)


def _run_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {"device": args.device, "precision": getattr(args, "precision", None),
            "max_images": getattr(args, "max_images", None)}


def cmd_run(args: argparse.Namespace) -> int:
    from calm.pipeline import merge
    from calm.result import save_result

    request = load_spec(args.spec, {"seed": args.seed}, _run_flags(args))
    show, close = _progress(args.progress)
    try:
        result = merge(request, run=request.run, on_progress=show)
        show(Progress("save", 1.0, f"writing {args.out}"))
        paths = save_result(result, args.out, request)
        show(Progress("done", 1.0, f"{len(paths)} files in {args.out}"))
    finally:
        close()
    print(summary_table(result.report))
    for kind, p in paths.items():
        print(f"{kind:>11}: {p}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from calm.validate import validate_spec

    request = load_spec(args.spec, None, _run_flags(args))
    problems = validate_spec(request, request.run, echo=print)
    for p in problems:
        print(f"calm-merge: error: {p}", file=sys.stderr)
    print("spec is valid" if not problems else f"{len(problems)} problem(s) found")
    return BAD_INPUT if problems else 0


def cmd_convert(args: argparse.Namespace) -> int:
    from calm.checkpoints import convert_to_safetensors

    if args.trust_pickle:
        print(f"calm-merge: warning: unpickling {args.src} runs code from that file; do this only "
              "with a file you made or trust", file=sys.stderr)
    n = convert_to_safetensors(args.src, args.dst, trust_pickle=args.trust_pickle)
    print(f"wrote {n} tensors to {args.dst}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    """The registry: every method, and with a name its options, defaults and meaning."""
    from calm.registry import REGISTRY

    if args.name is None:
        for name, cls in REGISTRY.items():
            print(f"{name:<16} {cls.title}{'' if cls.baseline else '  (not a baseline)'}")
        return 0
    if args.name not in REGISTRY:
        from calm.suggest import did_you_mean

        return _fail(f"unknown method {args.name!r};{did_you_mean(args.name, REGISTRY)} "
                     f"methods: {', '.join(REGISTRY)}")
    cls = REGISTRY[args.name]
    print(f"{args.name}: {cls.title}")
    defaults = cls().model_dump(mode="json")
    for field in cls.option_names():
        about = cls.model_fields[field].description or ""
        print(f"  {field} = {json.dumps(defaults[field])}" + (f"\n      {about}" if about else ""))
    return 0


def _run_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--device", help="auto, cpu, cuda or cuda:N (overrides run.device)")
    sp.add_argument("--precision", choices=["auto", "fp32", "bf16"], help="overrides run.precision")
    sp.add_argument("--max-images", type=int, help="images per data set (overrides run.max_images)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="calm-merge", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a merge and write its result folder (docs/results.md) to --out")
    run.add_argument("spec", type=Path, help="merge spec, YAML or JSON (docs/spec.md)")
    run.add_argument("--out", type=Path, required=True, help="output folder")
    run.add_argument("--seed", type=int, help="overrides the spec's seed")
    run.add_argument("--progress", choices=PROGRESS_MODES, default="auto", help=PROGRESS_HELP)
    _run_options(run)
    run.set_defaults(func=cmd_run)
    val = sub.add_parser("validate", help="check a spec, its checkpoints and data, print the plan; no merge")
    val.add_argument("spec", type=Path)
    _run_options(val)
    val.set_defaults(func=cmd_validate)
    methods = sub.add_parser("methods", help="list the merge methods, or one method's options")
    methods.add_argument("name", nargs="?", help="a method: print its options and defaults")
    methods.set_defaults(func=cmd_methods)
    conv = sub.add_parser("convert", help="load a torch checkpoint, write safetensors")
    conv.add_argument("src", type=Path)
    conv.add_argument("dst", type=Path)
    conv.add_argument("--trust-pickle", action="store_true",
                      help="unpickle SRC with arbitrary code (a pickled whole model): only for "
                      "files you trust")
    conv.set_defaults(func=cmd_convert)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="calm-merge: %(levelname)s: %(message)s")
    try:
        return int(args.func(args))
    except SpecError as e:
        lines = "".join(f"\n  {p}" for p in e.problems)
        return _fail(f"invalid spec {args.spec}:{lines}" if hasattr(args, "spec") else e.message)
    except CalmError as e:
        return _fail(f"[{e.code}] {e.message}")
    except (MergeCancelled, KeyboardInterrupt):
        print("calm-merge: cancelled", file=sys.stderr)
        return CANCELLED


if __name__ == "__main__":
    sys.exit(main())
