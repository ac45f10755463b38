"""One spec YAML through all three surfaces: `calm-merge validate` and `run` (local paths),
`calm-client merge create` (uploads, then the REST body) and `POST /v1/merges` (file ids, dry
run and real). The same file — a custom config given as a JSON file's path, `metadata`, a
`run:` section, a task name with spaces and parentheses, a folder of images — is accepted
everywhere, and the spec the service stores is the spec the CLI ran, file ids for paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select
from svc_api import Service

from calm.cli import main as calm_merge
from client.cli import main as calm_client
from core.models import FileObject, MergeJob

OPTIONS = {"epochs": 2, "batch_size": 4, "lr_grid": [1.0], "num_sequential": 1}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, tiny_arch: str, tiny_base_state: dict[str, Any],
           tiny_config: dict[str, Any]) -> Path:
    """A user's folder: checkpoints, a JSON model config, unlabeled data (a folder of PNGs and a
    tensor file), labelled eval tensors, and spec.yaml with relative paths."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("bundle")
    gen = torch.Generator().manual_seed(0)
    save_file(tiny_base_state, str(root / "base.safetensors"))
    for i in range(2):
        save_file({k: v + 0.02 * torch.randn(v.shape, generator=gen)
                   if k.startswith("visual.") and v.is_floating_point() else v
                   for k, v in tiny_base_state.items()}, str(root / f"task{i}.safetensors"))
        save_file({"images": torch.randn(6, 3, 16, 16, generator=gen),
                   "labels": torch.arange(6) % 2}, str(root / f"eval{i}.safetensors"))
    (root / "photos").mkdir()
    for j in range(8):
        pixels = np.random.default_rng(j).integers(0, 255, (20, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "photos" / f"{j}.png")
    save_file({"images": torch.randn(8, 3, 16, 16, generator=gen)}, str(root / "unlabeled1.safetensors"))
    (root / "arch.json").write_text(json.dumps(tiny_config))
    spec = {
        "model": {"arch": tiny_arch, "custom_config": "arch.json", "checkpoint": "base.safetensors"},
        "tasks": [
            {"name": "parity (inverted)", "checkpoint": "task0.safetensors", "unlabeled": "photos",
             "eval": "eval0.safetensors", "classnames": ["even", "odd"]},
            {"name": "digits-2", "checkpoint": "task1.safetensors", "unlabeled": "unlabeled1.safetensors",
             "eval": "eval1.safetensors", "classnames": ["zero", "one"], "templates": ["a photo of {}."]},
        ],
        "method": "calm", "options": OPTIONS, "baselines": ["task_arithmetic"], "seed": 3,
        "metadata": {"team": "vision", "ticket": "CALM-10"},
        "run": {"device": "cpu", "eval_batch_size": 64},
    }
    (root / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def cli_run(bundle: Path) -> dict[str, Any]:
    """`calm-merge validate` and `calm-merge run` on the bundle's spec.yaml (once per module)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert calm_merge(["validate", str(bundle / "spec.yaml")]) == 0
        assert calm_merge(["run", str(bundle / "spec.yaml"), "--out", str(bundle / "out")]) == 0
    printed = out.getvalue()
    lines = printed.splitlines()
    plan = [line[2:] for line in lines[lines.index("plan:") + 1:lines.index("spec is valid")]]
    return {"printed": printed, "plan": plan, "spec": json.loads((bundle / "out" / "spec.json").read_text())}


def _client(service: Service, url: str, *args: str) -> int:
    return calm_client(["--url", url, "--api-key", service.keys["a"], "-q", *args])


def _file_count(service: Service) -> int:
    with service.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        return session.scalar(select(func.count()).select_from(FileObject)
                              .where(FileObject.tenant_id == service.tenants["a"]))


def _paths_of(request: dict[str, Any], service: Service, bundle: Path) -> dict[str, Any]:
    """The stored request with each file id replaced by the name of the bundle file it came
    from (uploaded files keep their names; the folder went up as photos.zip)."""
    with service.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        names = {f.id: f.filename for f in session.scalars(select(FileObject))}
    data = json.loads(json.dumps(request))
    data["model"]["checkpoint"] = names[data["model"]["checkpoint"]]
    for task in data["tasks"]:
        for key in ("checkpoint", "unlabeled", "eval"):
            task[key] = names[task[key]].removesuffix(".zip")
    return data


def test_one_spec_yaml_through_cli_client_and_rest(service: Service, api_url: str, bundle: Path,
                                                   cli_run: dict[str, Any], capsys: Any) -> None:
    assert "fully sequential K=1" in cli_run["printed"] and "spec is valid" in cli_run["printed"]
    capsys.readouterr()
    # calm-client: validated locally, uploaded, checked by the service, resolved plan back; no job
    assert _client(service, api_url, "merge", "create", str(bundle / "spec.yaml"), "--dry-run") == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["object"] == "merge_plan" and plan["plan"] == cli_run["plan"]
    assert plan["merges"] == ["calm", "task_arithmetic"] and plan["run"]["eval_batch_size"] == 64
    with service.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        assert session.scalar(select(func.count()).select_from(MergeJob)
                              .where(MergeJob.tenant_id == service.tenants["a"])) == 0
    uploaded = _file_count(service)
    assert uploaded == 7  # base, 2 checkpoints, the zipped folder, a tensor file, 2 eval sets
    # the stored request is the spec the CLI ran, file ids for paths (spec.json has absolute paths)
    cli_spec = json.loads(json.dumps(cli_run["spec"]))
    cli_spec["model"]["checkpoint"] = Path(cli_spec["model"]["checkpoint"]).name
    for task in cli_spec["tasks"]:
        for key in ("checkpoint", "unlabeled", "eval"):
            task[key] = Path(task[key]).name
    stored = _paths_of(plan["request"], service, bundle)
    assert stored.pop("run") == {"device": "cpu", "precision": "auto", "eval_batch_size": 64,
                                 "micro_batch_size": "auto", "max_images": 20_000}
    assert stored == cli_spec
    # the real thing: same YAML, nothing uploaded twice, the job stores the same request
    assert _client(service, api_url, "merge", "create", str(bundle / "spec.yaml"), "--no-watch") == 0
    job = json.loads(capsys.readouterr().out)
    assert job["status"] == "queued" and job["metadata"] == {"team": "vision", "ticket": "CALM-10"}
    assert job["request"] == plan["request"] and _file_count(service) == uploaded


def test_unreachable_service_is_one_line(bundle: Path, capsys: Any) -> None:
    code = calm_client(["--url", "http://127.0.0.1:9", "--api-key", "k", "-q", "merge", "create",
                        str(bundle / "spec.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot reach the service at http://127.0.0.1:9" in err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def data_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_arch: str, tiny_base_state: dict[str, Any],
                tiny_config: dict[str, Any]) -> dict[str, Any]:
    """A user's data as exported: eval as a flat zip of PNGs with a `filename,label` CSV (class
    names and indices), eval as class-name folders of WebP/BMP with a stray README, unlabeled
    images in class folders; `calm-merge validate` and `run` on its spec.yaml (once)."""
    import contextlib
    import io
    import zipfile

    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    def image(seed: int, fmt: str = "PNG") -> bytes:
        buf = io.BytesIO()
        pixels = np.random.default_rng(seed).integers(0, 255, (20, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buf, format=fmt)
        return buf.getvalue()

    root = tmp_path_factory.mktemp("data_bundle")
    gen = torch.Generator().manual_seed(1)
    save_file(tiny_base_state, str(root / "base.safetensors"))
    for i in range(2):
        save_file({k: v + 0.02 * torch.randn(v.shape, generator=gen)
                   if k.startswith("visual.") and v.is_floating_point() else v
                   for k, v in tiny_base_state.items()}, str(root / f"task{i}.safetensors"))
    for j, cls in enumerate(["even", "odd"] * 3):
        (root / "photos" / cls).mkdir(parents=True, exist_ok=True)
        (root / "photos" / cls / f"{j}.png").write_bytes(image(j))
    with zipfile.ZipFile(root / "eval0.zip", "w") as z:
        for j in range(6):
            z.writestr(f"img_{j}.png", image(10 + j))
    (root / "eval0.csv").write_text("filename,label\n" + "".join(
        f"img_{j}.png,{['even', 'odd', '0', '1'][j % 4]}\n" for j in range(6)))
    for j, (cls, fmt) in enumerate([("zero", "WEBP"), ("one", "BMP"), ("zero", "BMP"), ("one", "WEBP")]):
        (root / "eval1" / cls).mkdir(parents=True, exist_ok=True)
        (root / "eval1" / cls / f"{j}.{fmt.lower()}").write_bytes(image(20 + j, fmt))
    (root / "eval1" / "README.txt").write_text("exported by a labelling tool")
    save_file({"images": torch.randn(8, 3, 16, 16, generator=gen)}, str(root / "u1.safetensors"))
    (root / "arch.json").write_text(json.dumps(tiny_config))
    spec = {
        "model": {"arch": tiny_arch, "custom_config": "arch.json", "checkpoint": "base.safetensors"},
        "tasks": [
            {"name": "parity", "checkpoint": "task0.safetensors", "unlabeled": "photos",
             "eval": "eval0.zip", "eval_labels": "eval0.csv", "classnames": ["even", "odd"]},
            {"name": "digits", "checkpoint": "task1.safetensors", "unlabeled": "u1.safetensors",
             "eval": "eval1", "classnames": ["zero", "one"]},
        ],
        "options": OPTIONS, "run": {"device": "cpu"},
    }
    (root / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        validated = calm_merge(["validate", str(root / "spec.yaml")])
        ran = calm_merge(["run", str(root / "spec.yaml"), "--out", str(root / "out")])
    return {"root": root, "codes": (validated, ran), "printed": out.getvalue(), "progress": err.getvalue()}


def test_a_users_data_bundle_runs_everywhere_unconverted(service: Service, api_url: str,
                                                        data_bundle: dict[str, Any], capsys: Any) -> None:
    """The same YAML through `calm-merge validate`, `calm-merge run` and `calm-client merge
    create`, with no conversion; skipped files named everywhere."""
    root, out = data_bundle["root"], data_bundle["printed"]
    assert data_bundle["codes"] == (0, 0), data_bundle["progress"]
    assert "ok  task parity: eval: 6 labelled images (zip)" in out
    assert ("ok  task digits: eval: 4 labelled images (dir); warning: skipped 1 file that is not an "
            "image or hidden: README.txt") in out and "spec is valid" in out
    report = json.loads((root / "out" / "report.json").read_text())
    assert report["samples"] == {"parity": 6, "digits": 4}
    assert set(report["accuracy"]["merged"]) == {"parity", "digits"}
    assert _client(service, api_url, "merge", "create", str(root / "spec.yaml"), "--dry-run") == 0
    plan = json.loads(capsys.readouterr().out)
    skipped = "tasks.1.eval (eval1.zip): skipped 1 file that is not an image or hidden: README.txt"
    assert skipped in plan["notes"]
    with service.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        csv = session.scalar(select(FileObject).where(FileObject.filename == "eval0.csv")
                             .where(FileObject.tenant_id == service.tenants["a"]))
        assert csv is not None and (csv.purpose, csv.format, csv.meta["rows"]) == ("eval", "csv", 6)
        assert plan["request"]["tasks"][0]["eval_labels"] == csv.id
