"""Safe checkpoint I/O (DESIGN.md §6): safetensors, or torch state dicts via weights_only only.

Nothing here ever unpickles arbitrary globals: `.pt/.pth/.bin` files go through
`torch.load(..., weights_only=True)`, and anything it refuses is an UnsafeCheckpointError.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from calm.errors import CalmError, CheckpointMismatchError, UnsafeCheckpointError
from calm.result import save_state_dict

Format = Literal["safetensors", "torch_zip", "pickle"]
MAX_REPORTED = 5  # mismatches listed by name in an error message
_WRAPPERS = ("state_dict", "model")  # {"state_dict": sd, ...} / {"model": sd, ...}
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / torch.compile
CONVERT_HINT = (
    "If you trust the file (you made it), convert it where its classes can be imported: "
    "`calm-merge convert --trust-pickle IN.pt OUT.safetensors` (this unpickles it, which runs "
    "code from the file), then use OUT.safetensors. Or save a plain state dict when training: "
    "`safetensors.torch.save_file(model.state_dict(), 'model.safetensors')`."
)


def sniff_format(path: Path) -> Format | None:
    """Checkpoint format from the content (extensions lie): safetensors header, zip, pickle."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 9 and head[8:9] == b"{":  # before the pickle test: a header length of
        n = int.from_bytes(head[:8], "little")  # 640 bytes starts with 0x80 0x02 as well
        if 2 <= n <= 100_000_000:  # the safetensors header cap
            return "safetensors"
    if head[:4] == b"PK\x03\x04":
        return "torch_zip"  # torch.save's default zip container
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"  # torch's legacy format / a raw pickle
    return None


def _check_size(path: Path, max_bytes: int | None) -> None:
    if not path.is_file():
        raise CalmError(f"checkpoint {path.name}: file not found", code="file_not_found")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise CalmError(
            f"checkpoint {path.name}: {size} bytes exceeds the limit of {max_bytes}",
            code="file_too_large",
        )


def _torch_load(path: Path) -> object:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol chatter from the safe unpickler
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f" (it needs {found.group(1)})" if found else ""
        whole = " It looks like a pickled whole model." if found and ".nn." in found.group(1) else ""
        raise UnsafeCheckpointError(
            f"checkpoint {path.name} is not a plain tensor state dict and was refused "
            f"without being unpickled{what}.{whole} {CONVERT_HINT}"
        ) from None
    except Exception as e:  # corrupt zip, truncated file, ...
        raise CalmError(
            f"checkpoint {path.name}: not a readable torch checkpoint ({e})",
            code="invalid_checkpoint",
        ) from None


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Strip {"state_dict"|"model": ...} wrappers and a prefix every key shares."""
    for _ in range(3):
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
                continue
        break
    if not isinstance(obj, Mapping) or not obj:
        got = "an empty mapping" if isinstance(obj, Mapping) else type(obj).__name__
        raise CalmError(
            f"checkpoint {path.name}: expected a state dict (name -> tensor), got {got}. "
            f"{CONVERT_HINT}",
            code="invalid_checkpoint",
        )
    bad = [str(k) for k, v in obj.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if bad:
        raise CalmError(
            f"checkpoint {path.name}: entries that are not named tensors: {bad[:MAX_REPORTED]}",
            code="invalid_checkpoint",
        )
    state: dict[str, torch.Tensor] = dict(obj)
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_state_dict(path: Path, max_bytes: int | None = None) -> dict[str, torch.Tensor]:
    """Load a checkpoint as {name: CPU tensor}, safely. Raises CalmError subclasses."""
    path = Path(path)
    _check_size(path, max_bytes)
    fmt = sniff_format(path)
    if fmt is None:
        raise CalmError(
            f"checkpoint {path.name}: unsupported format; expected .safetensors or a torch "
            f"state dict (.pt/.pth/.bin)",
            code="unsupported_format",
        )
    if fmt != "safetensors":
        return _unwrap(_torch_load(path), path)
    try:
        loaded = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CalmError(
            f"checkpoint {path.name}: not a readable safetensors file ({e})",
            code="invalid_checkpoint",
        ) from None
    return _unwrap(loaded, path)


def iter_checkpoints(
    paths: Iterable[Path], max_bytes: int | None = None
) -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
    """Load checkpoints one at a time (memory holds one state dict beyond the caller's)."""
    for p in paths:
        yield Path(p), load_state_dict(Path(p), max_bytes)


def _fmt_shape(t: torch.Tensor) -> str:
    return str(list(t.shape))


def _raise_problems(problems: list[str], name: str, against: str) -> None:
    if not problems:
        return
    shown = "; ".join(problems[:MAX_REPORTED])
    more = f" (and {len(problems) - MAX_REPORTED} more)" if len(problems) > MAX_REPORTED else ""
    err = CheckpointMismatchError(
        f"{name}: {len(problems)} mismatch(es) against {against}: {shown}{more}"
    )
    err.problems = problems  # type: ignore[attr-defined]
    raise err


def _name_problems(ref: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor]) -> list[str]:
    missing = [f"missing {k!r}" for k in ref if k not in other]
    unexpected = [f"unexpected {k!r}" for k in other if k not in ref]
    return missing + unexpected


def nonfinite_names(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of float tensors holding NaN or ±Inf."""
    return [
        k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


def check_finite(state: Mapping[str, torch.Tensor], name: str) -> None:
    _raise_problems([f"non-finite values in {k!r}" for k in nonfinite_names(state)], name, "NaN/Inf")


def _tensor_problems(
    ref: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor], against: str, exact_dtype: bool
) -> list[str]:
    """Missing/unexpected names, then shape and dtype differences against `ref`. With
    exact_dtype False only float-vs-non-float counts (load_state_dict casts float precision)."""
    problems = _name_problems(ref, other)
    for k, want in ref.items():
        t = other.get(k)
        if t is None:
            continue
        if t.shape != want.shape:
            problems.append(f"shape of {k!r} is {_fmt_shape(t)}, {against} has {_fmt_shape(want)}")
        elif (t.dtype != want.dtype) if exact_dtype else (t.is_floating_point() != want.is_floating_point()):
            problems.append(f"dtype of {k!r} is {t.dtype}, {against} has {want.dtype}")
    return problems


def check_compatible(
    base: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor], name: str
) -> None:
    """`other` must have the base's tensor names, shapes and dtypes, and finite float values."""
    problems = _tensor_problems(base, other, "base", exact_dtype=True)
    problems += [f"non-finite values in {k!r}" for k in nonfinite_names(other)]
    _raise_problems(problems, name, "the base checkpoint")


def check_matches_arch(
    model_state: Mapping[str, torch.Tensor], ckpt: Mapping[str, torch.Tensor], name: str = "checkpoint"
) -> None:
    """`ckpt` must fit a freshly built model: same names and shapes; float where it is float.
    (Float precision may differ: load_state_dict casts.)"""
    problems = _tensor_problems(model_state, ckpt, "the architecture", exact_dtype=False)
    _raise_problems(problems, name, "the model architecture")


def load_trusted_pickle(path: Path) -> dict[str, torch.Tensor]:
    """UNSAFE: unpickles `path` with arbitrary globals (it runs code from the file), for files
    the user vouches for (`calm-merge convert --trust-pickle`). A pickled module gives its
    state_dict(). Never called on data a service received."""
    path = Path(path)
    _check_size(path, None)
    if sniff_format(path) == "safetensors":
        return load_state_dict(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # missing classes (ModuleNotFoundError, AttributeError), corrupt file
        raise CalmError(f"checkpoint {path.name}: cannot unpickle it here ({type(e).__name__}: {e}); "
                        "run the conversion where the model's code can be imported",
                        code="invalid_checkpoint") from None
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    return _unwrap(obj, path)


def convert_to_safetensors(src: Path, dst: Path, max_bytes: int | None = None,
                           trust_pickle: bool = False) -> int:
    """Load `src` (safely; with `trust_pickle`, by unpickling it: see load_trusted_pickle) and
    write it as safetensors at `dst` (atomic). Returns #tensors."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and dst.resolve() == src.resolve():
        raise CalmError("convert: output must differ from the input", code="invalid_input")
    state = load_trusted_pickle(src) if trust_pickle else load_state_dict(src, max_bytes)
    seen: set[tuple[int, int]] = set()
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():  # safetensors refuses tensors that share storage: copy repeats
        key = (v.untyped_storage().data_ptr(), v.untyped_storage().nbytes())
        out[k] = v.clone() if key in seen and v.numel() else v
        seen.add(key)
    save_state_dict(out, dst, {"format": "pt"})
    return len(out)
