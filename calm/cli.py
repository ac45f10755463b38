"""`calm-merge`: run a merge from a YAML/JSON spec, validate a spec, convert checkpoints.

    calm-merge run spec.yaml --out out/ [--device auto|cpu|cuda] [--seed N]
    calm-merge validate spec.yaml
    calm-merge convert model.pt model.safetensors

Exit codes: 0 ok, 1 unexpected failure, 2 bad input (spec, files, data), 130 cancelled.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from calm.errors import CalmError, MergeCancelled
from calm.progress import Progress
from calm.spec import MergeSpec

BAD_INPUT, CANCELLED = 2, 130


def _fail(msg: str) -> int:
    print(f"calm-merge: error: {msg}", file=sys.stderr)
    return BAD_INPUT


def _resolve(p: Path | None, root: Path) -> Path | None:
    return None if p is None else (root / p.expanduser())


def load_spec(path: Path, overrides: dict[str, Any] | None = None) -> MergeSpec:
    """Parse a YAML/JSON spec; relative paths resolve against the spec file's folder.
    `model.custom_config` may be a path to a JSON file. Raises CalmError / ValidationError."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise CalmError(f"cannot read spec {path}: {e}", code="invalid_spec") from None
    if not isinstance(raw, dict):
        raise CalmError(f"spec {path} must be a mapping", code="invalid_spec")
    root = path.resolve().parent
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("custom_config"), str):
        cfg = root / model["custom_config"]
        try:
            model["custom_config"] = json.loads(cfg.read_text())
        except (OSError, ValueError) as e:
            raise CalmError(f"cannot read custom_config {cfg}: {e}", code="invalid_spec") from None
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    spec = MergeSpec.model_validate(raw)
    model_spec = spec.model.model_copy(update={"checkpoint": _resolve(spec.model.checkpoint, root)})
    tasks = [
        t.model_copy(update={f: _resolve(getattr(t, f), root)
                             for f in ("checkpoint", "unlabeled", "head", "eval")})
        for t in spec.tasks
    ]
    return spec.model_copy(update={"model": model_spec, "tasks": tasks})


def _progress_bar() -> tuple[Callable[[Progress], None], Callable[[], None]]:
    from tqdm import tqdm

    bar = tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}]{postfix}")

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


def cmd_run(args: argparse.Namespace) -> int:
    from calm.pipeline import merge
    from calm.result import save_result

    spec = load_spec(args.spec, {"device": args.device, "seed": args.seed})
    update, close = _progress_bar()
    try:
        result = merge(spec, on_progress=update, should_cancel=None)
    finally:
        close()
    paths = save_result(result, args.out, spec)
    print(summary_table(result.report))
    for kind, p in paths.items():
        print(f"{kind:>11}: {p}")
    return 0


class _Checker:
    """Runs one check, echoes 'ok', collects CalmError messages as problems."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo, self.problems = echo, []

    def __call__(self, label: str, fn: Callable[[], Any]) -> Any:
        try:
            out = fn()
        except CalmError as e:
            self.problems.append(f"{label}: [{e.code}] {e.message}")
            return None
        self.echo(f"ok  {label}" + (f": {out}" if isinstance(out, str) else ""))
        return out


def validate_spec(spec: MergeSpec, echo: Callable[[str], None] = print) -> list[str]:
    """Check everything `run` would load (device, arch, checkpoints, heads, data headers)
    without merging. Returns the problems found; one task checkpoint in memory at a time."""
    from calm.heads import load_head
    from calm.models import build_model, register_arch, resolve_device

    chk = _Checker(echo)
    chk("device", lambda: str(resolve_device(spec.device)))
    m = spec.model
    built = chk(f"architecture {m.arch}",
                lambda: (register_arch(m.arch, m.custom_config), build_model(m.arch))[1])
    if built is None:
        return chk.problems
    model, preprocess = built
    arch_state = model.state_dict()
    base = chk("base checkpoint", lambda: _checkpoint(m.checkpoint, arch_state, None, "base"))
    for t in spec.tasks:
        label = f"task {t.name}"
        chk(f"{label}: checkpoint", lambda t=t: _checkpoint(t.checkpoint, arch_state, base, t.name)
            and "matches the base")
        n_classes = len(t.classnames) if t.classnames else None
        if t.head is not None:
            head = chk(f"{label}: head", lambda t=t: load_head(t.head, int(model.visual.output_dim)))
            n_classes = None if head is None else int(head.shape[0])
        chk(f"{label}: unlabeled", lambda t=t: _data_info(t.unlabeled, preprocess, None))
        if t.eval is not None:
            chk(f"{label}: eval", lambda t=t, c=n_classes: _data_info(t.eval, preprocess, c, True))
    return chk.problems


def _checkpoint(path: Path, arch_state: dict, base: dict | None, name: str) -> dict:
    from calm.checkpoints import check_compatible, check_finite, check_matches_arch, load_state_dict

    state = load_state_dict(path)
    check_matches_arch(arch_state, state, name)
    if base is None:
        check_finite(state, name)
    else:
        check_compatible(base, state, name)
    return state


def _data_info(path: Path, preprocess: Any, n_classes: int | None, labelled: bool = False) -> str:
    from calm.data import describe_data

    info = describe_data(path, preprocess, labelled=labelled)
    if n_classes and info.num_classes and info.num_classes > n_classes:
        raise CalmError(f"{path.name}: labels go up to {info.num_classes - 1} but the task has "
                        f"{n_classes} classes", code="invalid_data")
    return f"{info.count} {'labelled ' if labelled else ''}images ({info.kind})"


def cmd_validate(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec, {"device": args.device})
    problems = validate_spec(spec, echo=print)
    for p in problems:
        print(f"calm-merge: error: {p}", file=sys.stderr)
    print("spec is valid" if not problems else f"{len(problems)} problem(s) found")
    return BAD_INPUT if problems else 0


def cmd_convert(args: argparse.Namespace) -> int:
    from calm.checkpoints import convert_to_safetensors

    n = convert_to_safetensors(args.src, args.dst)
    print(f"wrote {n} tensors to {args.dst}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="calm-merge", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a merge and write its result folder (docs/results.md) to --out")
    run.add_argument("spec", type=Path, help="merge spec, YAML or JSON")
    run.add_argument("--out", type=Path, required=True, help="output folder")
    run.add_argument("--device", help="auto, cpu, cuda or cuda:N (overrides the spec)")
    run.add_argument("--seed", type=int, help="overrides the spec's seed")
    run.set_defaults(func=cmd_run)
    val = sub.add_parser("validate", help="check a spec, its checkpoints and data; no merge")
    val.add_argument("spec", type=Path)
    val.add_argument("--device", help="device to build the model on (default: the spec's)")
    val.set_defaults(func=cmd_validate)
    conv = sub.add_parser("convert", help="safely load a torch state dict, write safetensors")
    conv.add_argument("src", type=Path)
    conv.add_argument("dst", type=Path)
    conv.set_defaults(func=cmd_convert)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ValidationError as e:
        return _fail(f"invalid spec:\n{e}")
    except CalmError as e:
        return _fail(f"[{e.code}] {e.message}")
    except (MergeCancelled, KeyboardInterrupt):
        print("calm-merge: cancelled", file=sys.stderr)
        return CANCELLED


if __name__ == "__main__":
    sys.exit(main())
