"""`calm-merge` commands: convert, validate, run; exit codes and error messages."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from calm.cli import load_spec, main, summary_table
from calm.provenance import spec_sha256
from calm.result_files import RESULT_FILES


def _spec(tmp_path: Path, ck, make_image_tensors, config: dict) -> dict[str, Any]:
    """A tiny two-task spec with paths relative to tmp_path."""
    tasks = []
    for i, path in enumerate(ck.tasks):
        tasks.append({
            "name": f"t{i}",
            "checkpoint": str(path.relative_to(tmp_path)),
            "unlabeled": str(make_image_tensors(f"u{i}", n=12, seed=i).relative_to(tmp_path)),
            "eval": str(make_image_tensors(f"e{i}", n=6, num_classes=2, seed=10 + i)
                        .relative_to(tmp_path)),
            "classnames": ["cat", "dog"],
        })
    return {
        "model": {"arch": ck.arch, "custom_config": config,
                  "checkpoint": str(ck.base.relative_to(tmp_path))},
        "tasks": tasks,
        "method": "calm",
        "options": {"epochs": 2, "batch_size": 4, "num_sequential": 1, "lr_grid": [1.0]},
        "run": {"device": "cpu"},
    }


@pytest.fixture
def spec_file(tmp_path: Path, make_checkpoints, make_image_tensors, tiny_config: dict) -> Path:
    spec = _spec(tmp_path, make_checkpoints(n_tasks=2), make_image_tensors, tiny_config)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_load_spec_resolves_relative_paths(spec_file: Path, tmp_path: Path, monkeypatch,
                                           tiny_config: dict) -> None:
    monkeypatch.chdir(tmp_path.parent)
    spec = load_spec(spec_file, {"seed": 7}, {"device": None})
    assert spec.seed == 7 and spec.run.device == "cpu"
    assert spec.model.checkpoint == tmp_path / "checkpoints" / "base.safetensors"
    assert all(t.unlabeled.is_absolute() and t.unlabeled.exists() for t in spec.tasks)
    raw = yaml.safe_load(spec_file.read_text())  # custom_config may be a JSON file's path
    (tmp_path / "arch.json").write_text(json.dumps(tiny_config))
    raw["model"]["custom_config"] = "arch.json"
    spec_file.write_text(json.dumps(raw))
    assert load_spec(spec_file).model.custom_config == tiny_config


def test_validate_ok_and_states_the_plan(spec_file: Path, capsys) -> None:
    assert main(["validate", str(spec_file)]) == 0
    out = capsys.readouterr().out
    assert "ok  base checkpoint" in out and "ok  task t1: eval: 6 labelled images" in out
    assert "plan:" in out and "fully sequential K=1" in out and "spec is valid" in out


def test_spec_errors_say_what_to_do(spec_file: Path, capsys) -> None:
    """Before any file is read: full option paths, did-you-mean, the owner of an option."""
    raw = yaml.safe_load(spec_file.read_text())
    for change, expected in (
        ({"options": {"num_sequentail": 1}}, "options.num_sequentail: unknown option for method 'calm'; "
                                             "did you mean 'num_sequential'"),
        ({"method": "ties", "options": {"epochs": 3}}, "options.epochs: 'epochs' is an option of 'calm', "
                                                       "not of 'ties'; method 'ties' takes: scaling"),
        ({"options": {"num_sequential": 2}}, "options.num_sequential: must be between 1 and T−1 = 1"),
        ({"method": "tie"}, "method: unknown method 'tie'; did you mean 'ties'?"),
        ({"device": "cpu"}, "device: 'device' is a run option"),
    ):
        spec_file.write_text(yaml.safe_dump({**raw, **change}))
        assert main(["validate", str(spec_file)]) == 2
        out, err = capsys.readouterr()
        assert expected in err and out == "", err


def test_validate_reports_mismatched_checkpoint(spec_file: Path, tmp_path: Path, capsys) -> None:
    state = load_file(str(tmp_path / "checkpoints" / "task1.safetensors"))
    state["visual.proj"] = torch.zeros(3, 3)
    state["visual.ln_post.bias"][0] = float("nan")
    del state["visual.conv1.weight"]
    save_file(state, str(tmp_path / "checkpoints" / "task1.safetensors"))
    assert main(["validate", str(spec_file)]) == 2
    err = capsys.readouterr().err
    assert "task t1: checkpoint" in err and "missing 'visual.conv1.weight'" in err
    assert "shape of 'visual.proj'" in err and "task t0" not in err


def test_base_checkpoint_as_a_tag_or_hub_id(spec_file: Path, tmp_path: Path, capsys) -> None:
    """Kept as written (not a path under the spec's folder); a Hub id: 'not supported offline'
    with the whole id, from validate and run alike."""
    raw = yaml.safe_load(spec_file.read_text())
    for ref in ("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "mytag"):
        spec_file.write_text(yaml.safe_dump({**raw, "model": {**raw["model"], "checkpoint": ref}}))
        assert str(load_spec(spec_file).model.checkpoint) == ref
    spec_file.write_text(yaml.safe_dump({**raw, "model": {**raw["model"], "checkpoint": "hf-hub:org/clip"}}))
    assert main(["validate", str(spec_file)]) == 2
    err = capsys.readouterr().err
    assert "base checkpoint: [unsupported_checkpoint] model.checkpoint 'hf-hub:org/clip': Hugging Face Hub " \
           "ids are not supported offline" in err and "huggingface-cli download org/clip" in err
    assert main(["run", str(spec_file), "--out", str(tmp_path / "out")]) == 2
    assert "not supported offline" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_invalid_spec_exit_2_nothing_written(spec_file: Path, tmp_path: Path, capsys) -> None:
    raw = yaml.safe_load(spec_file.read_text())
    raw["tasks"] = raw["tasks"][:1]  # a merge needs >= 2 tasks
    spec_file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert main(["run", str(spec_file), "--out", str(out)]) == 2
    assert "invalid spec" in capsys.readouterr().err and not out.exists()
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read spec" in capsys.readouterr().err
    spec_file.write_text("- just\n- a list\n")
    assert main(["validate", str(spec_file)]) == 2


def test_run_missing_checkpoint_exit_2(spec_file: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "checkpoints" / "task0.safetensors").unlink()
    out = tmp_path / "out"
    assert main(["run", str(spec_file), "--out", str(out)]) == 2
    assert "file_not_found" in capsys.readouterr().err and not out.exists()


def test_run_writes_result(spec_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["run", str(spec_file), "--out", str(out), "--seed", "3"]) == 0
    assert {p.name for p in out.iterdir()} == set(RESULT_FILES.values())
    report = json.loads((out / "report.json").read_text())
    assert report["seed"] == 3 and report["method"] == "calm"
    spec = json.loads((out / "spec.json").read_text())  # resolved: seed override, paths, options
    assert spec["seed"] == 3 and spec["options"]["lr_search"] == "first"
    assert Path(spec["tasks"][0]["checkpoint"]).is_absolute()
    with safe_open(str(out / "merged.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["method"] == "calm" and meta["seed"] == "3" and meta["spec_sha256"] == spec_sha256(spec)
    assert "<svg" in (out / "report.html").read_text()
    printed = capsys.readouterr().out
    assert "t0" in printed and "report_html: " in printed


LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d  +(\d+\.\d)%  (\S+)")


def test_run_progress_as_lines_when_not_on_a_terminal(spec_file: Path, tmp_path: Path, capsys) -> None:
    """Piped or logged: timestamped plain lines (auto) or JSON lines, never `\r` frames; stages
    in order, fractions never going back, `done` once at the very end."""
    assert main(["run", str(spec_file), "--out", str(tmp_path / "a")]) == 0  # auto: stderr is no TTY
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and lines and all(LINE.match(line) for line in lines), err
    stages = [LINE.match(line).group(2) for line in lines]  # type: ignore[union-attr]
    assert stages[0] == "load" and stages[-3:] == ["merged", "save", "done"] and stages.count("done") == 1
    assert main(["run", str(spec_file), "--out", str(tmp_path / "b"), "--progress", "json"]) == 0
    err = capsys.readouterr().err
    events = [json.loads(line) for line in err.splitlines()]
    assert all(set(e) == {"time", "stage", "fraction", "message", "metrics"} for e in events)
    fractions = [e["fraction"] for e in events]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    changes = [e["stage"] for i, e in enumerate(events) if i == 0 or e["stage"] != events[i - 1]["stage"]]
    assert changes[:2] == ["load", "pseudo_labels"] and changes[-3:] == ["merged", "save", "done"]
    assert any(s.startswith("mask:") for s in changes) and "evaluate" in changes
    assert any(e["metrics"] for e in events) and "\r" not in err


def test_progress_modes() -> None:
    import io

    from calm.progress import LineProgress, Progress, resolve_mode

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert resolve_mode("auto", Terminal()) == "bar" and resolve_mode("auto", io.StringIO()) == "plain"
    assert resolve_mode("json", Terminal()) == "json"
    out, now = io.StringIO(), [0.0]
    lines = LineProgress(out, min_interval_s=2.0, clock=lambda: now[0])
    steps = ((0.0, "a", 0.1), (0.5, "a", 0.2), (2.5, "a", 0.05), (2.6, "b", 0.5), (2.7, "b", 1.0))
    for t, stage, frac in steps:
        now[0] = t
        lines(Progress(stage, frac, "m", {"loss": 0.123456}))
    got = [line.split("  ", 1)[1] for line in out.getvalue().splitlines()]
    assert got == [" 10.0%  a  m  loss=0.1235", " 20.0%  a  m  loss=0.1235", " 50.0%  b  m  loss=0.1235",
                   "100.0%  b  m  loss=0.1235"]  # 0.5 s: throttled; 2.5 s: the 20 % it had reached


def test_convert(tmp_path: Path, capsys) -> None:
    state = {"w": torch.randn(2, 2), "b": torch.zeros(2)}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "in.pt")
    assert main(["convert", str(tmp_path / "in.pt"), str(tmp_path / "out.safetensors")]) == 0
    got = load_file(str(tmp_path / "out.safetensors"))
    assert torch.equal(got["w"], state["w"]) and "wrote 2 tensors" in capsys.readouterr().out
    module = torch.nn.Linear(2, 2)
    torch.save(module, tmp_path / "module.pt")
    assert main(["convert", str(tmp_path / "module.pt"), str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "unsafe_checkpoint" in err and not (tmp_path / "m.safetensors").exists()
    advice = re.search(r"`calm-merge (convert --trust-pickle) IN.pt OUT.safetensors`", err)
    assert advice  # ... and the advice works:
    argv = [*advice.group(1).split(), str(tmp_path / "module.pt"), str(tmp_path / "m.safetensors")]
    assert main(argv) == 0
    assert "warning: unpickling" in capsys.readouterr().err
    got = load_file(str(tmp_path / "m.safetensors"))
    assert torch.equal(got["weight"], module.weight.detach()) and set(got) == {"weight", "bias"}


def test_summary_table() -> None:
    report = {"accuracy": {"individual": {"a": 0.9, "b": 0.8}, "merged": {"a": 0.85}},
              "average": {"individual": 0.85, "merged": 0.85}, "normalized": {"merged": 0.944}}
    table = summary_table(report)
    assert "individual" in table and "90.00" in table and "0.944" in table
    assert summary_table({"method": "ties"}).startswith("method ties")


def test_methods_lists_the_registry_and_each_methods_options(capsys) -> None:
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("calm ") and "iso_cts" in out
    assert main(["methods", "ties"]) == 0
    assert "  density = 0.2" in capsys.readouterr().out
    assert main(["methods", "tie"]) == 2
    assert "did you mean 'ties'?" in capsys.readouterr().err
