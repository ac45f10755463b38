"""open_clip models: register custom architectures, build models offline, pick devices.

Nothing here downloads weights: models are built with `pretrained=None` and the caller's
state dict is loaded strictly.
"""

from __future__ import annotations

import atexit
import json
import logging
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
import torch

from calm.checkpoints import check_matches_arch
from calm.errors import CalmError
from calm.suggest import did_you_mean

Preprocess = Callable[[Any], torch.Tensor]  # PIL image -> [3, H, W]
# Plain names only: no "hf-hub:" / "local-dir:" schemas (downloads / reading server paths).
ARCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_REQUIRED_KEYS = ("embed_dim", "vision_cfg", "text_cfg")
_BUILTIN = frozenset(
    p.stem for p in (Path(open_clip.__file__).parent / "model_configs").glob("*.json")
)
_lock = threading.Lock()
_config_dir: Path | None = None


def _check_arch_name(arch: str) -> None:
    if not ARCH_NAME.match(arch):
        raise CalmError(
            f"architecture name {arch!r} is not allowed: use letters, digits, '.', '_', '+', '-' "
            "(at most 128 characters, no schema such as 'hf-hub:')",
            code="invalid_model_config",
        )


def _registry_dir() -> Path:
    """One process-wide folder of JSON configs handed to open_clip.add_model_config."""
    global _config_dir
    if _config_dir is None:
        _config_dir = Path(tempfile.mkdtemp(prefix="calm-open-clip-configs-"))
        atexit.register(shutil.rmtree, _config_dir, True)
    return _config_dir


def _normalized(config: dict[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(config, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise CalmError(f"model config is not plain JSON: {e}", code="invalid_model_config") from None


def register_arch(arch: str, config: dict[str, Any] | None) -> None:
    """Make `arch` buildable. With `config`, register it as an open_clip model config
    (idempotent; a custom arch may be re-registered with a new config, a built-in may not).
    Without, `arch` must already be known to open_clip."""
    _check_arch_name(arch)
    known = open_clip.get_model_config(arch)
    if config is None:
        if known is None:
            raise CalmError(
                f"unknown architecture {arch!r}: not an open_clip built-in;"
                f"{did_you_mean(arch, open_clip.list_models())} (or give custom_config)",
                code="unknown_arch",
            )
        return
    config = _normalized(config)
    missing = [k for k in _REQUIRED_KEYS if not isinstance(config.get(k), int | dict)]
    if missing:
        raise CalmError(
            f"custom_config for {arch!r} lacks {missing} (needs embed_dim, vision_cfg, text_cfg)",
            code="invalid_model_config",
        )
    if known is not None and _normalized(known) == config:
        return
    if arch in _BUILTIN:
        raise CalmError(
            f"{arch!r} is an open_clip built-in with a different config; pick another name",
            code="invalid_model_config",
        )
    with _lock:
        path = _registry_dir() / f"{arch}.json"
        path.write_text(json.dumps(config))
        factory = open_clip.factory  # private hooks only to avoid re-adding the same path
        rescan = getattr(factory, "_rescan_model_configs", None)
        if rescan is not None and path in getattr(factory, "_MODEL_CONFIG_PATHS", []):
            rescan()
        else:
            open_clip.add_model_config(path)  # appends the path and rescans
    if _normalized(open_clip.get_model_config(arch) or {}) != config:
        raise CalmError(f"could not register {arch!r} with open_clip", code="invalid_model_config")


class _DropRandomInitWarning(logging.Filter):
    """open_clip warns 'No pretrained weights loaded' on every build; we load them next."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def build_model(
    arch: str,
    state_dict: dict[str, torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
    name: str = "checkpoint",
) -> tuple[torch.nn.Module, Preprocess]:
    """A CLIP model of `arch` in eval mode (weights from `state_dict`, strict) and its eval
    transform. Raises CalmError for unknown arches / bad configs, CheckpointMismatchError
    (naming `name` and the offending tensors) when the state dict does not fit."""
    _check_arch_name(arch)
    if open_clip.get_model_config(arch) is None:
        raise CalmError(f"unknown architecture {arch!r};{did_you_mean(arch, open_clip.list_models())}",
                        code="unknown_arch")
    quiet = _DropRandomInitWarning()
    logging.getLogger().addFilter(quiet)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=None, pretrained_image=False, pretrained_hf=False
        )
    except Exception as e:  # bad config keys / values surface as TypeError, ValueError, ...
        raise CalmError(
            f"cannot build architecture {arch!r}: {type(e).__name__}: {e}",
            code="invalid_model_config",
        ) from None
    finally:
        logging.getLogger().removeFilter(quiet)
    if state_dict is not None:
        check_matches_arch(model.state_dict(), state_dict, name)
        model.load_state_dict(state_dict, strict=True)
    return model.to(resolve_device(device)).eval(), preprocess


def image_param_names(model: torch.nn.Module) -> list[str]:
    """Float parameters of the image tower (`visual.*`): the only tensors that are merged.
    The text tower, logit_scale and all buffers stay at θ0."""
    return [
        n
        for n, p in model.named_parameters()
        if n.startswith("visual.") and p.is_floating_point()
    ]


def resolve_device(name: str | torch.device) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda[:N]' must be available."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise CalmError(f"unknown device {name!r}: {e}", code="invalid_device") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CalmError(f"device {name!r} requested but CUDA is not available", "invalid_device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CalmError(f"device {name!r} does not exist", code="invalid_device")
    elif dev.type not in ("cpu", "mps"):
        raise CalmError(f"unsupported device {name!r}", code="invalid_device")
    return dev
