"""open_clip model registry, offline building, merged-parameter selection, devices."""

from __future__ import annotations

import copy
from pathlib import Path

import open_clip
import pytest
import torch

from calm.errors import CalmError, CheckpointMismatchError
from calm.models import build_model, image_param_names, register_arch, resolve_device
from calm.result import save_state_dict


def test_register_is_idempotent_and_guards_builtins(tiny_arch: str, tiny_config: dict) -> None:
    register_arch(tiny_arch, copy.deepcopy(tiny_config))  # same config again: no-op
    assert open_clip.get_model_config(tiny_arch) == tiny_config
    register_arch("ViT-B-32", None)  # a built-in needs no config
    register_arch("ViT-B-32", open_clip.get_model_config("ViT-B-32"))  # identical: fine
    with pytest.raises(CalmError, match="built-in") as err:
        register_arch("ViT-B-32", tiny_config)
    assert err.value.code == "invalid_model_config"
    with pytest.raises(CalmError) as err:
        register_arch("no-such-arch-xyz", None)
    assert err.value.code == "unknown_arch"


@pytest.mark.parametrize("name", ["hf-hub:org/repo", "local-dir:/etc", "../x", "a/b", ""])
def test_schema_and_path_names_refused(name: str, tiny_config: dict) -> None:
    with pytest.raises(CalmError, match="not allowed"):
        register_arch(name, tiny_config)
    with pytest.raises(CalmError, match="not allowed"):
        build_model(name)


def test_custom_arch_can_be_reregistered(tiny_config: dict) -> None:
    cfg = copy.deepcopy(tiny_config)
    register_arch("calm-test-rereg", cfg)
    cfg["vision_cfg"]["layers"] = 1
    register_arch("calm-test-rereg", cfg)
    model, _ = build_model("calm-test-rereg")
    assert len(model.visual.transformer.resblocks) == 1


def test_bad_config_is_a_clear_error(tiny_config: dict) -> None:
    with pytest.raises(CalmError, match="lacks"):
        register_arch("calm-test-incomplete", {"embed_dim": 32})
    bad = copy.deepcopy(tiny_config)
    bad["vision_cfg"]["no_such_option"] = 1
    register_arch("calm-test-badkey", bad)
    with pytest.raises(CalmError, match="cannot build") as err:
        build_model("calm-test-badkey")
    assert err.value.code == "invalid_model_config"


def test_build_model_round_trip(tiny_arch: str, tiny_base_state: dict) -> None:
    model, preprocess = build_model(tiny_arch, tiny_base_state)
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, tiny_base_state[k]), k
    from PIL import Image

    assert preprocess(Image.new("RGB", (40, 30))).shape == (3, 16, 16)


def test_build_model_mismatch_names_tensors(tiny_arch: str, tiny_base_state: dict) -> None:
    state = dict(tiny_base_state)
    del state["visual.proj"]
    with pytest.raises(CheckpointMismatchError, match="missing 'visual.proj'"):
        build_model(tiny_arch, state)


def test_image_param_names(tiny_arch: str) -> None:
    model, _ = build_model(tiny_arch)
    names = image_param_names(model)
    assert names and all(n.startswith("visual.") for n in names)
    assert "visual.conv1.weight" in names and "logit_scale" not in names
    assert not any(n.startswith(("transformer.", "token_embedding")) for n in names)
    visual = {n for n, _ in model.named_parameters() if n.startswith("visual.")}
    assert set(names) == visual


def test_saved_state_dict_loads_in_open_clip(tmp_path: Path, tiny_arch: str,
                                             tiny_base_state: dict) -> None:
    """A merged state dict written by calm.result loads via open_clip's own `pretrained=`."""
    gen = torch.Generator().manual_seed(0)
    merged = {k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
              for k, v in tiny_base_state.items()}
    ours, _ = build_model(tiny_arch, merged)
    path = tmp_path / "merged.safetensors"
    save_state_dict(merged, path, {"format": "pt"})
    theirs = open_clip.create_model(tiny_arch, pretrained=str(path)).eval()
    images = torch.randn(4, 3, 16, 16, generator=gen)
    tokens = open_clip.get_tokenizer(tiny_arch)(["a photo of a cat", "a dog"])
    with torch.no_grad():
        assert torch.equal(ours.encode_image(images), theirs.encode_image(images))
        assert torch.equal(ours.encode_text(tokens), theirs.encode_text(tokens))


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(CalmError) as err:
        resolve_device("tpu-ish")
    assert err.value.code == "invalid_device"
    if not torch.cuda.is_available():
        with pytest.raises(CalmError, match="not available"):
            resolve_device("cuda")
