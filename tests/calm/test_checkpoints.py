"""Safe checkpoint loading (DESIGN.md §6): formats, wrappers, refusals, compatibility checks."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from calm.checkpoints import (
    check_compatible,
    check_matches_arch,
    convert_to_safetensors,
    iter_checkpoints,
    load_state_dict,
    sniff_format,
)
from calm.errors import CalmError, CheckpointMismatchError, UnsafeCheckpointError


def _state() -> dict[str, torch.Tensor]:
    return {
        "a.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "a.bias": torch.tensor([0.5, -0.5]),
        "steps": torch.tensor([3], dtype=torch.int64),
    }


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


def test_loads_safetensors(tmp_path: Path) -> None:
    save_file(_state(), str(tmp_path / "m.safetensors"))
    assert sniff_format(tmp_path / "m.safetensors") == "safetensors"
    _assert_same(load_state_dict(tmp_path / "m.safetensors"), _state())


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".weird", ""])
def test_loads_torch_state_dict_any_extension(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"m{suffix}"
    torch.save(_state(), path)
    _assert_same(load_state_dict(path), _state())


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_unwraps_and_strips_module_prefix(tmp_path: Path, wrapper: str) -> None:
    wrapped = {wrapper: {f"module.{k}": v for k, v in _state().items()}, "epoch": 7}
    torch.save(wrapped, tmp_path / "m.pt")
    _assert_same(load_state_dict(tmp_path / "m.pt"), _state())


def test_legacy_torch_format(tmp_path: Path) -> None:
    torch.save(_state(), tmp_path / "m.pt", _use_new_zipfile_serialization=False)
    assert sniff_format(tmp_path / "m.pt") == "pickle"
    _assert_same(load_state_dict(tmp_path / "m.pt"), _state())


class _Evil:
    """Unpickling this would run `open(target, 'w')`, creating a file."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return (open, (self.target, "w"))


@pytest.mark.parametrize("how", ["torch_zip", "raw_pickle"])
def test_malicious_pickle_refused_and_never_executed(tmp_path: Path, how: str) -> None:
    target = tmp_path / "PWNED"
    payload = {"w": torch.zeros(2), "x": _Evil(str(target))}
    path = tmp_path / "evil.pt"
    if how == "torch_zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    assert not target.exists()
    with pytest.raises(UnsafeCheckpointError) as err:
        load_state_dict(path)
    assert not target.exists()
    assert err.value.code == "unsafe_checkpoint"
    assert "state_dict()" in err.value.message and "safetensors" in err.value.message


def test_pickled_whole_module_refused_with_conversion_hint(tmp_path: Path) -> None:
    torch.save(torch.nn.Linear(3, 2), tmp_path / "model.pt")
    with pytest.raises(UnsafeCheckpointError) as err:
        load_state_dict(tmp_path / "model.pt")
    msg = err.value.message
    assert "whole model" in msg and "torch.nn.modules.linear.Linear" in msg
    assert "calm-merge convert --trust-pickle IN.pt OUT.safetensors" in msg  # tests/calm/test_cli.py runs it
    assert "save_file(model.state_dict()" in msg


def test_unknown_format_and_corrupt_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello, not a checkpoint")
    with pytest.raises(CalmError) as err:
        load_state_dict(tmp_path / "notes.txt")
    assert err.value.code == "unsupported_format"
    save_file(_state(), str(tmp_path / "m.safetensors"))
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CalmError) as err:
        load_state_dict(tmp_path / "cut.safetensors")
    assert err.value.code == "invalid_checkpoint"
    with pytest.raises(CalmError) as err:
        load_state_dict(tmp_path / "missing.pt")
    assert err.value.code == "file_not_found"


def test_non_tensor_entries_and_size_cap(tmp_path: Path) -> None:
    torch.save({"a": torch.zeros(1), "b": 3}, tmp_path / "m.pt")
    with pytest.raises(CalmError, match="not named tensors.*'b'"):
        load_state_dict(tmp_path / "m.pt")
    torch.save(_state(), tmp_path / "ok.pt")
    with pytest.raises(CalmError) as err:
        load_state_dict(tmp_path / "ok.pt", max_bytes=10)
    assert err.value.code == "file_too_large"


def test_check_compatible_reports_mismatches_by_name() -> None:
    base = _state()
    check_compatible(base, _state(), "same")
    other = _state()
    del other["a.bias"]
    other["extra"] = torch.zeros(1)
    other["a.weight"] = torch.zeros(3, 2)
    other["steps"] = other["steps"].to(torch.int32)
    with pytest.raises(CheckpointMismatchError) as err:
        check_compatible(base, other, "task-x")
    msg = err.value.message
    assert msg.startswith("task-x: 4 mismatch(es)")
    for part in ("missing 'a.bias'", "unexpected 'extra'", "shape of 'a.weight' is [3, 2]",
                 "dtype of 'steps' is torch.int32"):
        assert part in msg
    assert err.value.code == "checkpoint_mismatch"


def test_check_compatible_lists_at_most_five() -> None:
    base = {f"p{i}": torch.zeros(1) for i in range(8)}
    with pytest.raises(CheckpointMismatchError) as err:
        check_compatible(base, {}, "empty")
    assert "missing 'p4'" in err.value.message and "missing 'p5'" not in err.value.message
    assert "(and 3 more)" in err.value.message


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_detected(bad: float) -> None:
    other = _state()
    other["a.bias"] = torch.tensor([0.0, bad])
    with pytest.raises(CheckpointMismatchError, match="non-finite values in 'a.bias'"):
        check_compatible(_state(), other, "t")


def test_check_matches_arch(tiny_base_state: dict, make_checkpoints) -> None:
    ck = make_checkpoints(n_tasks=1)
    check_matches_arch(tiny_base_state, load_state_dict(ck.tasks[0]))
    half = {k: v.half() if v.is_floating_point() else v for k, v in tiny_base_state.items()}
    check_matches_arch(tiny_base_state, half)  # precision may differ; load_state_dict casts
    wrong = dict(tiny_base_state)
    wrong["visual.conv1.weight"] = torch.zeros(8, 3, 4, 4)
    with pytest.raises(CheckpointMismatchError, match="visual.conv1.weight.*architecture"):
        check_matches_arch(tiny_base_state, wrong, "base")


def test_iter_checkpoints_one_at_a_time(make_checkpoints) -> None:
    ck = make_checkpoints(n_tasks=3)
    seen = [(p, sd["visual.proj"]) for p, sd in iter_checkpoints(ck.tasks)]
    assert [p for p, _ in seen] == ck.tasks
    for (_, proj), want in zip(seen, ck.task_states, strict=True):
        assert torch.equal(proj, want["visual.proj"])


def test_convert_to_safetensors_handles_shared_storage(tmp_path: Path) -> None:
    w = torch.randn(4, 4)
    torch.save({"state_dict": {"module.enc.weight": w, "module.dec.weight": w}}, tmp_path / "m.pt")
    assert convert_to_safetensors(tmp_path / "m.pt", tmp_path / "m.safetensors") == 2
    out = load_file(str(tmp_path / "m.safetensors"))
    assert torch.equal(out["enc.weight"], w) and torch.equal(out["dec.weight"], w)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_safetensors_whose_header_length_looks_like_a_pickle(tmp_path: Path) -> None:
    """A 640-byte header starts the file with 0x80 0x02, a pickle's first bytes."""
    import json as _json

    from calm.checkpoints import load_state_dict, sniff_format

    name = "w" * 560
    header = _json.dumps({name: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})
    header = header + " " * (640 - len(header))
    path = tmp_path / "odd.safetensors"
    path.write_bytes((640).to_bytes(8, "little") + header.encode() + b"\x00\x00\x80\x3f")
    assert path.read_bytes()[:2] == b"\x80\x02" and sniff_format(path) == "safetensors"
    assert load_state_dict(path)[name].tolist() == [1.0]


HUB_REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"  # open_clip's ViT-B-32 'laion2b_s34b_b79k'


def _hf_cache(root: Path, repo: str, filename: str, state: dict[str, torch.Tensor]) -> Path:
    """A Hugging Face cache holding one file of `repo` (the layout huggingface_hub writes)."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    path = folder / "snapshots" / "0123abcd" / filename
    path.parent.mkdir(parents=True)
    save_file(state, str(path))
    return path


def test_pretrained_tags_resolve_from_the_local_cache_only(tmp_path: Path, monkeypatch) -> None:
    """A tag works when its weights are cached; nothing is downloaded; misses say what to do."""
    import huggingface_hub

    from calm.pretrained import base_checkpoint, cached_pretrained

    cache = tmp_path / "hub"
    cache.mkdir()
    with pytest.raises(CalmError) as e:
        cached_pretrained("ViT-B-32", "laion2b_s34b_b79k", cache_dir=cache)
    assert e.value.code == "checkpoint_not_cached" and "not in the local cache" in e.value.message
    assert "open_clip.create_model('ViT-B-32', pretrained='laion2b_s34b_b79k')" in e.value.message
    cached = _hf_cache(cache, HUB_REPO, "open_clip_model.safetensors", _state())
    assert cached_pretrained("ViT-B-32", "LAION2B-s34b-b79k", cache_dir=cache) == cached
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # the default cache
    _assert_same(load_state_dict(base_checkpoint("ViT-B-32", "laion2b_s34b_b79k")), _state())
    weights = tmp_path / "laion2b_s34b_b79k"  # a file of that name wins over the tag
    save_file({"x": torch.ones(1)}, str(weights))
    assert base_checkpoint("ViT-B-32", weights) == weights
    for ref, code, text in (
        ("laion2b_s34b_b7", "file_not_found", "not an open_clip pretrained tag of ViT-B-32; did you mean "
                                              "'laion2b_s34b_b79k'"),
        ("openai", "checkpoint_mismatch", "QuickGELU activations; use arch 'ViT-B-32-quickgelu'"),
        (f"hf-hub:{HUB_REPO}", "unsupported_checkpoint",
         f"model.checkpoint 'hf-hub:{HUB_REPO}': Hugging Face Hub ids are not supported offline"),
    ):
        with pytest.raises(CalmError) as e:
            base_checkpoint("ViT-B-32", ref)
        assert e.value.code == code and text in e.value.message, e.value.message
    with pytest.raises(CalmError, match="calm-test-none has no pretrained tags"):
        base_checkpoint("calm-test-none", "mytag")
