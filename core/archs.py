"""Model architectures the API accepts, known without importing open_clip (or torch).

- A built-in: one of open_clip's own config names, from a catalogue shipped beside this module
  (`open_clip_archs.json`; `python -m core.archs` rewrites it from the installed open_clip, and a
  test keeps the two equal). An architecture name is only ever looked up in that catalogue:
  never as a path, never as 'hf-hub:' or any other schema.
- A custom config: given inline as JSON, under a new name, with the keys open_clip's
  CLIPVisionCfg / CLIPTextCfg take, bounded sizes, and nothing that downloads (hf_* text
  towers, timm_* image towers).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from calm.suggest import did_you_mean

CATALOGUE = Path(__file__).with_name("open_clip_archs.json")
ARCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")  # as calm.models
CLIP_VOCAB = 49408  # open_clip's default tokenizer: a text tower must embed every id
Size = Annotated[int, Field(ge=1, le=65536)]
Scalar = str | int | float | bool | None


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class VisionCfg(_Cfg):
    layers: Annotated[int, Field(ge=1, le=256)] | list[Annotated[int, Field(ge=1, le=256)]] = 12
    width: Size = 768
    head_width: Size = 64
    mlp_ratio: float = Field(default=4.0, gt=0, le=64)
    patch_size: Annotated[int, Field(ge=1, le=1024)] = 16
    image_size: Annotated[int, Field(ge=1, le=4096)] | list[Annotated[int, Field(ge=1, le=4096)]] = 224
    ls_init_value: float | None = None
    patch_dropout: float = Field(default=0.0, ge=0, lt=1)
    attentional_pool: bool = False
    attn_pooler_queries: Size = 256
    attn_pooler_heads: Size = 8
    no_ln_pre: bool = False
    pos_embed_type: str = "learnable"
    final_ln_after_pool: bool = False
    pool_type: str = "tok"
    output_tokens: bool = False
    act_kwargs: dict[str, Scalar] | None = None
    norm_kwargs: dict[str, Scalar] | None = None
    block_type: str | None = None
    qk_norm: bool = False
    scaled_cosine_attn: bool = False
    scale_heads: bool = False
    scale_attn_inner: bool = False
    scale_attn: bool = False
    scale_fc: bool = False


class TextCfg(_Cfg):
    context_length: Annotated[int, Field(ge=1, le=4096)] = 77
    vocab_size: Annotated[int, Field(ge=1, le=1_000_000)] = CLIP_VOCAB
    width: Size = 512
    heads: Size = 8
    layers: Annotated[int, Field(ge=1, le=256)] = 12
    mlp_ratio: float = Field(default=4.0, gt=0, le=64)
    ls_init_value: float | None = None
    embed_cls: bool = False
    pad_id: int = Field(default=0, ge=0)
    eos_id: int = Field(default=2, ge=0)
    no_causal_mask: bool = False
    final_ln_after_pool: bool = False
    pool_type: str = "argmax"
    proj_bias: bool = False
    proj_type: str = "linear"
    output_tokens: bool = False
    act_kwargs: dict[str, Scalar] | None = None
    norm_kwargs: dict[str, Scalar] | None = None
    block_type: str | None = None
    qk_norm: bool = False
    scaled_cosine_attn: bool = False
    scale_heads: bool = False
    scale_attn_inner: bool = False
    scale_attn: bool = False
    scale_fc: bool = False


class CustomConfig(_Cfg):
    embed_dim: Size
    vision_cfg: VisionCfg
    text_cfg: TextCfg
    quick_gelu: bool = False
    custom_text: bool = False
    init_logit_bias: float | None = None


class ArchError(ValueError):
    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


@lru_cache(maxsize=1)
def builtins() -> dict[str, dict[str, Any]]:
    """name -> {"embed_dim", "image_size", "timm"} of open_clip's built-in configs."""
    return json.loads(CATALOGUE.read_text())


def _heads_ok(width: int, heads: int) -> bool:
    return heads >= 1 and width % heads == 0


def check_custom(arch: str, config: dict[str, Any]) -> dict[str, Any]:
    """The architecture facts of an inline config ({"embed_dim", "image_size", "vocab_size"})."""
    if arch in builtins():
        what = f"{arch!r} is an open_clip built-in; give the custom config another name"
        raise ArchError("invalid_model_config", what)
    try:
        cfg = CustomConfig.model_validate(config)
    except ValidationError as e:
        details = [{"loc": "model.custom_config." + ".".join(map(str, x["loc"])), "message": x["msg"]}
                   for x in e.errors(include_url=False)]  # fmt: skip
        text = "; ".join(f"{d['loc']}: {d['message']}" for d in details[:5])
        raise ArchError("invalid_model_config", text, details) from None
    v, t = cfg.vision_cfg, cfg.text_cfg
    problems = []
    if isinstance(v.layers, int) and not _heads_ok(v.width, v.width // v.head_width):
        problems.append("vision_cfg.width must be a multiple of width // head_width >= 1")
    if isinstance(v.image_size, list) and len(v.image_size) != 2:
        problems.append("vision_cfg.image_size is one size or [H, W]")
    if isinstance(v.layers, list) and len(v.layers) != 4:
        problems.append("vision_cfg.layers is a number or a list of 4 (ResNet)")
    if not _heads_ok(t.width, t.heads):
        problems.append("text_cfg.width must be a multiple of text_cfg.heads")
    if problems:
        raise ArchError("invalid_model_config", "model.custom_config: " + "; ".join(problems))
    return {"embed_dim": cfg.embed_dim, "image_size": v.image_size, "vocab_size": t.vocab_size, "timm": False}


def resolve(arch: str, custom_config: dict[str, Any] | None) -> dict[str, Any]:
    """The facts of `arch` (built-in, or the inline config); ArchError when unusable."""
    if not ARCH_NAME.match(arch):
        raise ArchError(
            "invalid_model_config",
            f"model.arch {arch[:80]!r} is not an architecture name: use letters, digits, '.', '_', "
            "'+', '-' (at most 128 characters; never a path or a schema such as 'hf-hub:')",
        )
    if custom_config is not None:
        return check_custom(arch, custom_config)
    found = builtins().get(arch)
    if found is None:
        raise ArchError(
            "unknown_architecture",
            f"model.arch {arch!r} is not a built-in open_clip architecture;"
            f"{did_you_mean(arch, builtins())} (or give its config as model.custom_config)",
        )
    return {**found, "vocab_size": CLIP_VOCAB}


def image_shape(facts: dict[str, Any]) -> list[int] | None:
    """[3, H, W] the worker's preprocessing makes, or None when not known here (timm towers)."""
    if facts.get("timm"):
        return None
    size = facts["image_size"]
    return [3, size, size] if isinstance(size, int) else [3, *size]


def write_catalogue() -> None:
    """Rewrites open_clip_archs.json from the installed open_clip (run after upgrading it)."""
    import open_clip

    folder = Path(open_clip.__file__).parent / "model_configs"
    out = {}
    for path in sorted(folder.glob("*.json")):
        cfg = json.loads(path.read_text())
        vision = cfg.get("vision_cfg", {})
        out[path.stem] = {
            "embed_dim": cfg.get("embed_dim"),
            "image_size": vision.get("image_size", 224),
            "timm": bool(vision.get("timm_model_name")),
        }
    lines = (f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(out.items()))
    CATALOGUE.write_text("{\n" + ",\n".join(lines) + "\n}\n")


if __name__ == "__main__":
    write_catalogue()
