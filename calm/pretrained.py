"""`model.checkpoint` as an open_clip pretrained tag (`laion2b_s34b_b79k`): used when its weights
are already in the local Hugging Face cache — nothing is downloaded (merges run offline). A
Hub id (`hf-hub:org/name`) is refused with what to do instead.

Importable without torch (spec files and calm-client use `keep_as_written`); open_clip is
imported only to resolve a tag.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from calm.errors import CalmError

HF_HUB_PREFIX = "hf-hub:"
HF_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip's order


def is_hub_id(ref: Any) -> bool:
    return str(ref).startswith(HF_HUB_PREFIX)


def is_tag_like(ref: Any) -> bool:
    """A bare name with no path separator or suffix (every open_clip tag is one)."""
    s = str(ref)
    return bool(s) and not any(c in s for c in "/\\.:")


def keep_as_written(ref: Any, root: Path) -> bool:
    """Whether a base checkpoint reference is no path relative to `root`: a Hub id, or a
    tag-like name with no such file there."""
    return is_hub_id(ref) or (is_tag_like(ref) and not (root / str(ref)).exists())


def hub_error(ref: Any) -> CalmError:
    repo = str(ref)[len(HF_HUB_PREFIX):]
    return CalmError(
        f"model.checkpoint {str(ref)!r}: Hugging Face Hub ids are not supported offline (nothing is "
        f"downloaded during a merge). Download the weights once — e.g. `huggingface-cli download "
        f"{repo} open_clip_model.safetensors` — and give that file's path as model.checkpoint",
        code="unsupported_checkpoint")


def base_checkpoint(arch: str, ref: Any, cache_dir: Path | None = None) -> Path:
    """The file of the base weights: `ref` itself when it exists (or looks like a path), else
    the cached weights of the open_clip pretrained tag `ref` of `arch`. CalmError otherwise."""
    if is_hub_id(ref):
        raise hub_error(ref)
    path = Path(ref)
    if path.exists() or not is_tag_like(ref):
        return path
    return cached_pretrained(arch, str(ref), cache_dir)


def _tag_of(arch: str, tag: str) -> str:
    import open_clip

    from calm.suggest import did_you_mean

    tags = open_clip.list_pretrained_tags_by_model(arch)
    clean = tag.lower().replace("-", "_")  # open_clip's own normalisation
    if clean in tags:
        return clean
    known = f"tags of {arch}: {', '.join(tags)}" if tags else f"{arch} has no pretrained tags"
    raise CalmError(f"model.checkpoint {tag!r}: no such file, and not an open_clip pretrained tag of "
                    f"{arch};{did_you_mean(tag, tags)} {known}", code="file_not_found")


def _check_activation(arch: str, tag: str, cfg: dict[str, Any]) -> None:
    """Weights trained with QuickGELU need an architecture built with it (open_clip sets it from
    the tag when it downloads; a merge builds the architecture by name)."""
    import open_clip

    if cfg.get("quick_gelu") and not (open_clip.get_model_config(arch) or {}).get("quick_gelu"):
        alt = f"{arch}-quickgelu"
        fix = f"use arch {alt!r}" if alt in open_clip.list_models() else "use a QuickGELU architecture"
        raise CalmError(f"model.checkpoint {tag!r}: these {arch} weights were trained with QuickGELU "
                        f"activations; {fix} with them", code="checkpoint_mismatch")


def cached_pretrained(arch: str, tag: str, cache_dir: Path | None = None) -> Path:
    """The local file of open_clip's pretrained weights `tag` for `arch`, from the Hugging Face
    cache (`cache_dir`, default: the HF_HUB_CACHE in force). Never downloads."""
    import open_clip
    from huggingface_hub import constants, try_to_load_from_cache

    clean = _tag_of(arch, tag)
    cfg = open_clip.get_pretrained_cfg(arch, clean)
    _check_activation(arch, tag, cfg)
    repo, filename = os.path.split(str(cfg.get("hf_hub") or ""))  # "org/name/" or "org/name/file"
    alt = [filename[:-4] + ".safetensors"] if filename.endswith((".bin", ".pth")) else []
    names = [*alt, filename] if filename else list(HF_WEIGHTS)
    where = Path(cache_dir or constants.HF_HUB_CACHE)
    for name in names:
        found = try_to_load_from_cache(repo, name, cache_dir=str(where)) if repo else None
        if isinstance(found, str):
            return Path(found)
    raise CalmError(
        f"model.checkpoint {tag!r}: the open_clip weights {arch}/{clean} ({repo}) are not in the local "
        f"cache ({where}) and a merge does not download. Fetch them once where there is network — "
        f"`python -c \"import open_clip; open_clip.create_model('{arch}', pretrained='{clean}')\"` "
        "— or give the weights file's path as model.checkpoint",
        code="checkpoint_not_cached")
