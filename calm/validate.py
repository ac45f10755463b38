"""`calm-merge validate`: everything a merge would refuse, found before it starts — device,
architecture, checkpoints against the architecture and the base, heads, data (format, count
against `run.max_images`, labels against the classes), options that need the model
(exclude_keys) — and the resolved plan. One task checkpoint in memory at a time.

(The spec's own rules, K vs T and option names, are checked when it is parsed: calm.spec.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from calm.errors import CalmError
from calm.run_options import RunOptions
from calm.spec import MergeSpec, TaskSpec


class Checker:
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


def validate_spec(spec: MergeSpec, run: RunOptions | None = None,
                  echo: Callable[[str], None] = print) -> list[str]:
    """Check everything `run` would load without merging, then print the plan. Returns the
    problems found."""
    from calm.models import build_model, register_arch, resolve_device
    from calm.pretrained import base_checkpoint

    run = run or getattr(spec, "run", None) or RunOptions()
    chk = Checker(echo)
    chk("device", lambda: str(resolve_device(run.device)))
    m = spec.model
    built = chk(f"architecture {m.arch}",
                lambda: (register_arch(m.arch, m.custom_config), build_model(m.arch))[1])
    if built is not None:
        model, preprocess = built
        arch_state = model.state_dict()
        base = chk("base checkpoint", lambda: _checkpoint(base_checkpoint(m.arch, m.checkpoint),
                                                          arch_state, None, "base"))
        if base is not None:
            chk("options", lambda: _check_tensor_options(spec, model))
        for t in spec.tasks:
            _check_task(chk, t, model, preprocess, arch_state, base, run)
    echo("plan:")
    for line in spec.describe():
        echo(f"  {line}")
    return chk.problems


def _check_task(chk: Checker, t: TaskSpec, model: Any, preprocess: Any, arch_state: dict,
                base: dict | None, run: RunOptions) -> None:
    from calm.data import DataLimits, Labelling
    from calm.heads import load_head

    label, limits = f"task {t.name}", DataLimits(max_images=run.max_images)
    chk(f"{label}: checkpoint", lambda: _checkpoint(t.checkpoint, arch_state, base, t.name)
        and "matches the base")
    n_classes = len(t.classnames) if t.classnames else None
    if t.head is not None:
        scale = float(model.logit_scale.exp())
        dim = int(model.visual.output_dim)
        head = chk(f"{label}: head", lambda: load_head(t.head, dim, scale, n_classes))
        n_classes = None if head is None else int(head.shape[0])
    chk(f"{label}: unlabeled", lambda: _data_info(t.unlabeled, preprocess, limits))
    if t.eval is not None:
        how = Labelling(t.classnames, n_classes, t.eval_labels)
        chk(f"{label}: eval", lambda: _data_info(t.eval, preprocess, limits, how))


def _checkpoint(path: Path, arch_state: dict, base: dict | None, name: str) -> dict:
    from calm.checkpoints import check_compatible, check_finite, check_matches_arch, load_state_dict

    state = load_state_dict(path)
    check_matches_arch(arch_state, state, name)
    if base is None:
        check_finite(state, name)
    else:
        check_compatible(base, state, name)
    return state


def _check_tensor_options(spec: MergeSpec, model: Any) -> str:
    """Options that name tensors (exclude_keys) must name merged ones: float visual.* parameters."""
    from calm.models import image_param_names

    unknown = sorted(set(getattr(spec.options, "exclude_keys", None) or ()) - set(image_param_names(model)))
    if unknown:
        raise CalmError(f"options.exclude_keys names tensors that are not merged: {unknown[:5]} "
                        "(use names of float visual.* parameters of the checkpoint)", code="invalid_options")
    return "fit the model"


def _data_info(path: Path, preprocess: Any, limits: Any, labelling: Any = None) -> str:
    from calm.data import describe_data

    info = describe_data(path, preprocess, limits=limits, labelling=labelling)
    what = f"{info.count} {'labelled ' if labelling is not None else ''}images ({info.kind})"
    return "; ".join([what, *(f"warning: {n}" for n in info.notes)])
