"""Load everything a merge needs into a MergeContext: base model, heads, unlabeled data,
pseudo-labels from each individual model, and (optionally) labelled eval sets."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from calm.checkpoints import check_finite, load_state_dict
from calm.context import MergeContext, TaskData
from calm.data import load_images, load_labelled
from calm.evaluate import EvalSet
from calm.forward import accuracy, predict_logits
from calm.heads import load_head, zero_shot_head
from calm.models import build_model, image_param_names, register_arch, resolve_device
from calm.pseudo_labels import select as select_pseudo
from calm.spec import CalmOptions, MergeSpec, TaskSpec
from calm.task_vectors import TaskVectorSource, add, select


@dataclass
class Loaded:
    ctx: MergeContext
    base_state: dict[str, torch.Tensor]  # full pretrained state dict (CPU)
    eval_sets: dict[str, EvalSet] = field(default_factory=dict)
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> task -> acc


def _head(model: torch.nn.Module, arch: str, task: TaskSpec, device: torch.device) -> torch.Tensor:
    if task.head is not None:
        return load_head(task.head, int(model.visual.output_dim)).to(device)
    assert task.classnames is not None
    return zero_shot_head(model, arch, task.classnames, task.templates).to(device)


def load_context(spec: MergeSpec, ctx_kwargs: dict) -> Loaded:
    """Build θ0, heads and data on the compute device; no task checkpoint is loaded yet."""
    device = resolve_device(spec.device)
    register_arch(spec.model.arch, spec.model.custom_config)
    base_state = load_state_dict(spec.model.checkpoint)
    check_finite(base_state, "base")
    model, preprocess = build_model(spec.model.arch, base_state, device, name="base")
    theta0 = select(base_state, image_param_names(model), device)
    vectors = TaskVectorSource(base_state, theta0, {t.name: t.checkpoint for t in spec.tasks}, device)
    tasks, evals = {}, {}
    for t in spec.tasks:
        head = _head(model, spec.model.arch, t, device)
        tasks[t.name] = TaskData(t.name, head, load_images(t.unlabeled, preprocess).to(device))
        if spec.evaluate and t.eval is not None:
            images, labels = load_labelled(t.eval, preprocess)
            evals[t.name] = EvalSet(images.to(device), labels, head)
    ctx = MergeContext(model.visual, theta0, vectors, tasks, device, seed=spec.seed,
                       bf16=spec.precision == "bf16", batch_size=spec.eval_batch_size, **ctx_kwargs)
    return Loaded(ctx, base_state, evals)


def _eval_one(loaded: Loaded, name: str, params: dict[str, torch.Tensor]) -> float:
    ctx, ev = loaded.ctx, loaded.eval_sets[name]
    logits = predict_logits(ctx.visual, params, ev.images, ev.head, ctx.batch_size, ctx.bf16)
    return accuracy(logits, ev.labels)


def pseudo_label_pass(loaded: Loaded, opts: CalmOptions) -> None:
    """Per task, one checkpoint at a time: pseudo-labels from its individual model θ0+τ_t
    on its unlabeled inputs, and its eval accuracy (individual and zero-shot)."""
    ctx = loaded.ctx
    zero, indiv = {}, {}
    for i, (name, tau) in enumerate(ctx.vectors.iter()):
        ctx.check_cancel()
        params = add(ctx.theta0, tau)
        task = ctx.tasks[name]
        task.pseudo = select_pseudo(ctx.logits(params, name), opts.ratio, opts.class_balanced)
        if name in loaded.eval_sets:
            indiv[name] = _eval_one(loaded, name, params)
            zero[name] = _eval_one(loaded, name, ctx.theta0)
        ctx.report("pseudo_labels", (i + 1) / len(ctx.tasks), name,
                   selected=float(len(task.pseudo.selected)))
        del tau, params
    if indiv:
        loaded.accuracy.update(zero_shot=zero, individual=indiv)
