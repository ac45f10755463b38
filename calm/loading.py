"""Load everything a merge needs into a MergeContext — base model, heads, unlabeled data on
the host — then the one pass over the task checkpoints: pseudo-labels from each individual model
(with its own float buffers), its eval accuracy, and the sum of all task vectors."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from calm.buffers import float_buffer_names
from calm.checkpoints import check_finite, load_state_dict
from calm.context import MergeContext, TaskData
from calm.data import DataLimits, Labelling, load_images, load_labelled
from calm.evaluate import EvalSet
from calm.forward import accuracy, predict_logits
from calm.heads import load_head, zero_shot_head
from calm.models import build_model, image_param_names, register_arch, resolve_device
from calm.pretrained import base_checkpoint
from calm.pseudo_labels import hold_out
from calm.pseudo_labels import select as select_pseudo
from calm.run_options import RunOptions
from calm.spec import CalmOptions, MergeSpec, TaskSpec
from calm.task_vectors import Params, TaskVectorSource, add, zeros_like


@dataclass
class Loaded:
    ctx: MergeContext
    base_state: dict[str, torch.Tensor]  # full pretrained state dict (CPU)
    eval_sets: dict[str, EvalSet] = field(default_factory=dict)
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> task -> acc


def _head(model: torch.nn.Module, arch: str, task: TaskSpec, device: torch.device) -> torch.Tensor:
    if task.head is not None:
        scale = float(model.logit_scale.exp())
        n = len(task.classnames) if task.classnames is not None else None
        return load_head(task.head, int(model.visual.output_dim), scale, n).to(device)
    assert task.classnames is not None
    return zero_shot_head(model, arch, task.classnames, task.resolved_templates()).to(device)


def load_context(spec: MergeSpec, run: RunOptions, ctx_kwargs: dict) -> Loaded:
    """θ0 and heads on the compute device, data on the host; no task checkpoint is read yet."""
    device = resolve_device(run.device)
    register_arch(spec.model.arch, spec.model.custom_config)
    base_state = load_state_dict(base_checkpoint(spec.model.arch, spec.model.checkpoint))
    check_finite(base_state, "base")
    model, preprocess = build_model(spec.model.arch, base_state, device, name="base")
    own = dict(model.named_parameters())
    theta0 = {n: own[n].detach() for n in image_param_names(model)}  # shares the module's storage
    buffer_names = float_buffer_names(model)
    own_buffers = dict(model.named_buffers())
    buffers0 = {n: own_buffers[n].detach().float() for n in buffer_names}
    vectors = TaskVectorSource(base_state, theta0, {t.name: t.checkpoint for t in spec.tasks},
                               device, buffer_names)
    limits = DataLimits(max_images=run.max_images)
    tasks, evals = {}, {}
    for t in spec.tasks:
        head = _head(model, spec.model.arch, t, device)
        tasks[t.name] = TaskData(t.name, head, load_images(t.unlabeled, preprocess, limits))
        if spec.evaluate and t.eval is not None:
            how = Labelling(t.classnames, int(head.shape[0]), t.eval_labels)
            images, labels = load_labelled(t.eval, preprocess, limits, how)
            evals[t.name] = EvalSet(images, labels, head)
    if device.type == "cuda":
        for data in [*(t.unlabeled for t in tasks.values()), *(e.images for e in evals.values())]:
            data.pin()
    ctx = MergeContext(model.visual, theta0, vectors, tasks, device, seed=spec.seed,
                       bf16=run.resolved_precision(device.type) == "bf16",
                       batch_size=run.eval_batch_size, buffers0=buffers0, eval_sets=evals,
                       **ctx_kwargs)
    return Loaded(ctx, base_state, evals)


def _eval_one(loaded: Loaded, name: str, params: Params) -> float:
    ctx, ev = loaded.ctx, loaded.eval_sets[name]
    logits = predict_logits(ctx.visual, params, ev.images, ev.head, ctx.batch_size, ctx.bf16)
    return accuracy(logits, ev.labels)


def pseudo_label_pass(loaded: Loaded, opts: CalmOptions) -> None:
    """Per task, one checkpoint read: pseudo-labels from its individual model θ0+τ_t (with
    its own buffers) on its unlabeled inputs, a seeded held-out share of the confident ones,
    its eval accuracy (individual and zero-shot), and the running sum Σ_t τ_t."""
    ctx = loaded.ctx
    zero, indiv = {}, {}
    total = zeros_like(ctx.theta0)
    for i, name in enumerate(ctx.vectors.names):
        ctx.check_cancel()
        tau = ctx.vectors.read(name)
        params = {**add(ctx.theta0, tau), **ctx.vectors.buffers(name)}
        task = ctx.tasks[name]
        pseudo = select_pseudo(ctx.logits(params, name), opts.ratio, opts.class_balanced)
        task.pseudo = hold_out(pseudo, opts.holdout, ctx.seed + i)
        if name in loaded.eval_sets:
            indiv[name] = _eval_one(loaded, name, params)
            zero[name] = _eval_one(loaded, name, {**ctx.theta0, **ctx.buffers0})
        for k, v in tau.items():
            total[k] += v
        ctx.report("pseudo_labels", (i + 1) / len(ctx.tasks), name,
                   {"selected": float(len(pseudo.selected))})
        del tau, params
    ctx.vectors.total = total
    if indiv:
        loaded.accuracy.update(zero_shot=zero, individual=indiv)
