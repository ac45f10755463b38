"""Real-scale mechanics (issue 6) on tiny models: accumulated mask gradients equal the
all-at-once gradient, data stays on the host and travels in batches, each checkpoint is read
once, the screened lr search gives exactly the chosen rate's run, held-out splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from calm import MergeRequest, merge
from calm.forward import visual_features
from calm.heads import logits as head_logits
from calm.images import HostImages
from calm.loading import load_context, pseudo_label_pass
from calm.methods.lr_search import _next_rate
from calm.methods.masks import MaskTrainer, _pieces, accumulate_gradient, gradient_scale, init_logits
from calm.pseudo_labels import PseudoLabels, hold_out
from calm.spec import CalmOptions

FAST = {"epochs": 2, "lr_grid": [1.0], "batch_size": 8, "batches_per_task": 2, "base_lambda": 0.3}


def _spec(make_checkpoints: Any, make_image_tensors: Any, n_tasks: int = 3, n: int = 24,
          **kw: Any) -> MergeRequest:
    ck = make_checkpoints(n_tasks=n_tasks, scale=0.05)
    tasks = [{"name": f"t{i}", "checkpoint": str(p),
              "unlabeled": str(make_image_tensors(f"u{i}", n=n, seed=i)),
              "eval": str(make_image_tensors(f"e{i}", n=10, num_classes=3, seed=10 + i)),
              "classnames": ["cat", "dog", "bird"]} for i, p in enumerate(ck.tasks)]
    return MergeRequest.model_validate({"model": {"arch": ck.arch, "checkpoint": str(ck.base)},
                                     "tasks": tasks, "run": {"device": "cpu"}, **kw})


def test_accumulated_gradient_equals_all_at_once(make_checkpoints: Any,
                                                 make_image_tensors: Any) -> None:
    spec = _spec(make_checkpoints, make_image_tensors, options=FAST)
    opts = CalmOptions.model_validate(FAST)
    loaded = load_context(spec, spec.run, {})
    pseudo_label_pass(loaded, opts)
    ctx = loaded.ctx
    seen = ["t0", "t1", "t2"]
    tau_seq, tau_s = ctx.vectors.get("t0"), ctx.vectors.get("t1")
    m = {k: v + 0.3 * torch.randn_like(v) for k, v in init_logits(tau_s, 1e-2, 1.0).items()}

    # reference: autograd through θ(m) = θ0 + τ_seq + σ(m)⊙Δ, every seen task's batches at once
    ref_m = {k: v.clone().requires_grad_(True) for k, v in m.items()}
    params = {k: ctx.theta0[k] + tau_seq[k] + torch.sigmoid(ref_m[k]) * (tau_s[k] - tau_seq[k])
              for k in m}
    pieces = _pieces(ctx, seen, opts, torch.Generator().manual_seed(0))
    x = torch.cat([ctx.tasks[t].unlabeled.batch(rows, ctx.device) for t, rows, _, _ in pieces])
    feats = visual_features(ctx.visual, params, x)  # [B, D]
    loss, start = feats.new_zeros(()), 0
    for task, rows, labels, _ in pieces:
        loss = loss + F.cross_entropy(head_logits(feats[start:start + len(rows)],
                                                  ctx.tasks[task].head), labels)
        start += len(rows)
    loss.backward()

    for micro in (1, 5, 1000):  # 1000 ≥ everything: a single micro-batch
        trainer = MaskTrainer(ctx, tau_seq, tau_s, seen, opts, micro, {})
        trainer._fill(m, binary=False)
        acc_loss = accumulate_gradient(ctx, trainer.theta, {}, seen, opts,
                                       torch.Generator().manual_seed(0), micro)
        torch.testing.assert_close(acc_loss, loss.detach(), rtol=1e-5, atol=1e-6)
        for k in m:
            sig = torch.sigmoid(m[k])
            grad_m = trainer.theta[k].grad * (tau_s[k] - tau_seq[k]) * sig * (1 - sig)
            ref = ref_m[k].grad
            torch.testing.assert_close(grad_m, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_merge_keeps_data_on_the_host_and_moves_batches(
        make_checkpoints: Any, make_image_tensors: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    moved: list[int] = []
    original = HostImages.batch

    def spy(self: HostImages, index: Any, device: torch.device) -> torch.Tensor:
        out = original(self, index, device)
        moved.append(out.shape[0])
        assert self.data.device.type == "cpu"  # the set itself never leaves the host
        return out

    monkeypatch.setattr(HostImages, "batch", spy)
    spec = _spec(make_checkpoints, make_image_tensors, n=40, options={**FAST, "epochs": 1},
                 run={"device": "cpu", "micro_batch_size": 4, "eval_batch_size": 8}, baselines=["ties"])
    result = merge(spec)
    assert moved and max(moved) <= 8  # never a whole 40-image set in one transfer
    assert result.report["micro_batch_size"] == 4


def test_each_checkpoint_is_read_once(make_checkpoints: Any, make_image_tensors: Any) -> None:
    spec = _spec(make_checkpoints, make_image_tensors, n_tasks=5, n=16,
                 options={**FAST, "epochs": 1, "num_sequential": "auto"},
                 baselines=["ties", "task_arithmetic"])
    result = merge(spec)
    assert result.report["checkpoint_reads"] == {f"t{i}": 1 for i in range(5)}
    choice = result.report["method_info"]["plan_choice"]
    assert set(choice["candidates"]) == {"K=2", "K=4"}  # T=5: efficient and fully sequential
    best = max(choice["candidates"].values(), key=lambda c: c["agreement"])
    assert result.report["method_info"]["plan"] == best["plan"]


def test_screened_lr_search_equals_running_the_chosen_rate(make_checkpoints: Any,
                                                           make_image_tensors: Any) -> None:
    """Candidates share init and batch order; the winner continues where its screen stopped,
    so the merge is bitwise that of the chosen rate alone."""
    opts = {**FAST, "epochs": 4, "lr_grid": [0.3, 3.0], "lr_screen": 0.25, "lr_grid_extend": 1}
    searched = merge(_spec(make_checkpoints, make_image_tensors, options=opts, seed=1))
    step = next(iter(searched.report["method_info"]["steps"].values()))
    assert step["lr_screen_epochs"] == 1 and len(step["lr_scores"]) in (2, 3)
    chosen = step["lr_relative"]
    alone = merge(_spec(make_checkpoints, make_image_tensors, seed=1,
                        options={**opts, "lr_grid": [chosen]}))
    for name, v in searched.state_dict.items():
        assert torch.equal(v, alone.state_dict[name]), name


def test_edge_of_the_grid_extends_it() -> None:
    grid = [0.3, 1.0, 3.0]
    assert _next_rate({0.3: 0.5, 1.0: 0.6, 3.0: 0.7}, 3.0, grid) == pytest.approx(9.0)
    assert _next_rate({0.3: 0.8, 1.0: 0.6, 3.0: 0.7}, 0.3, grid) == pytest.approx(0.09)
    assert _next_rate({0.3: 0.5, 1.0: 0.8, 3.0: 0.7}, 1.0, grid) is None


def test_gradient_scale_waits_for_a_nonzero_gradient() -> None:
    assert gradient_scale([torch.zeros(10), torch.zeros(3)], 0.1) is None
    g = [torch.tensor([0.0, 4.0, -2.0]), torch.tensor([1.0])]
    assert gradient_scale(g, 0.5) == pytest.approx(3.0)  # top 2 of 4 entries: 4 and 2


def test_hold_out_is_a_seeded_stratified_split() -> None:
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 2])
    pseudo = PseudoLabels(labels, torch.arange(10))
    split = hold_out(pseudo, 0.25, seed=3)
    assert split.train is not None and split.holdout is not None
    both = torch.cat([split.train, split.holdout]).sort().values
    assert torch.equal(both, torch.arange(10))  # disjoint, covering the selection
    assert sorted(labels[split.holdout].tolist()) == [0, 1]  # one per class; none from a singleton
    again = hold_out(pseudo, 0.25, seed=3)
    assert torch.equal(again.holdout, split.holdout)


def test_spill_is_removed_after_the_merge(make_checkpoints: Any, make_image_tensors: Any,
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    merge(_spec(make_checkpoints, make_image_tensors, options={**FAST, "epochs": 1}, evaluate=False))
    assert list((tmp_path / "scratch").iterdir()) == []
