"""Step 3 of CALM: consensus-aware mask optimisation for one sequential task.

θ(m) = θ0 + τ_seq + σ(m)⊙Δ,  Δ = τ_s − τ_seq  (per tensor; one logit per entry).
Loss = Σ over every task seen so far of CE on its selected (training-share) pseudo-labels. One
update per epoch from the summed gradients of `batches_per_task` shuffled batches of each seen
task:

    binarize (reference):  m ← m − lr·∂L/∂m + α·sign(m)·σ'(m)     (∂L/∂m = σ'(m)·∂L/∂θ⊙Δ)
    l1:                    m ← m − lr·∂L/∂m − α·σ'(m)

With relative rates (lr="auto") the step is lr_rel·∂L/∂m / s, s = mean |∂L/∂m| over its top
`grad_scale_top_fraction` of entries at the first epoch with a non-zero gradient: scale-free.

Memory: ∂L/∂θ is accumulated micro-batch by micro-batch into one leaf θ (autograd never sees
the mask math), then ∂L/∂m = σ'(m)·Δ⊙∂L/∂θ once per epoch — so peak memory is set by the
micro-batch, not by the number of seen tasks or batches. Full-size fp32 tensors held: θ0,
τ_seq, τ_s, m, θ, ∂L/∂θ (+ one more m while lr candidates are screened); Δ and θ0+τ_seq are
formed tensor by tensor. Keeping τ_seq and τ_s (not base and Δ) makes the binarised merge exact:
every entry is bit for bit τ_seq's or τ_s's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from calm.context import MergeContext
from calm.forward import visual_features
from calm.heads import logits as head_logits
from calm.mask_density import mask_density
from calm.spec import CalmOptions
from calm.task_vectors import Params


@dataclass
class MaskState:
    """A mask being learned: its logits, the batch-order generator, epochs run so far, the
    gradient scale s once known, and the last epoch's loss (a device tensor: no sync)."""

    m: Params
    gen: torch.Generator
    epoch: int = 0
    scale: float | None = None
    loss: torch.Tensor | None = None
    history: list[float] = field(default_factory=list)  # held-out scores when screened
    buffers: Params | None = None  # BatchNorm statistics re-estimated for this mask (else the step's)

    def mask(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() > 0 for k, v in self.m.items()}

    def density(self) -> float:
        return mask_density(v > 0 for v in self.m.values())


def _global_threshold(values: list[torch.Tensor], k: int) -> torch.Tensor:
    """The k-th largest entry over several tensors, without concatenating them all."""
    return torch.topk(torch.cat(_tops(values, k)), k, sorted=False).values.min()


def _tops(values: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Each tensor's k largest entries, flat (a tensor of at most k entries whole, no topk)."""
    return [v.flatten() if v.numel() <= k else torch.topk(v.flatten(), k, sorted=False).values
            for v in values]


def init_logits(tau_s: Params, sparsity: float, b: float) -> Params:
    """m = +b on the top-k |τ_s| entries (k = sparsity·P, at least 1), −b elsewhere."""
    total = sum(v.numel() for v in tau_s.values())
    k = max(1, int(sparsity * total))
    threshold = _global_threshold([v.abs() for v in tau_s.values()], k)
    return {n: torch.where(v.abs() >= threshold, b, -b).float() for n, v in tau_s.items()}


def new_state(tau_s: Params, opts: CalmOptions, seed: int) -> MaskState:
    return MaskState(init_logits(tau_s, opts.sparsity, opts.init_logit),
                     torch.Generator().manual_seed(seed))


def gradient_scale(grads: list[torch.Tensor], top_fraction: float) -> float | None:
    """Mean |g| over the top `top_fraction` of entries; None when the gradient is all zero."""
    total = sum(g.numel() for g in grads)
    k = max(1, int(top_fraction * total))
    tops = _tops([g.abs() for g in grads], k)
    scale = float(torch.topk(torch.cat(tops), k, sorted=False).values.mean())
    return scale if scale > 0 else None


def sigmoid_prime(m: torch.Tensor) -> torch.Tensor:
    """σ'(m) = σ(m)·(1 − σ(m)), one new tensor."""
    sig = torch.sigmoid(m)
    return sig.mul_(1 - sig)


@torch.no_grad()
def mask_update(m: torch.Tensor, grad: torch.Tensor, step: float, regularizer: str,
                alpha: float, sig_prime: torch.Tensor | None = None) -> None:
    """In place: one update of logits m given ∂L/∂m and the effective step size (σ'(m) when
    the caller has it)."""
    sp = sigmoid_prime(m) if sig_prime is None else sig_prime
    # binarize: +α·sign(m)·σ'(m) pushes logits away from 0; l1: −α·σ'(m) pushes M toward 0
    reg = sp.mul_(torch.sign(m)) if regularizer == "binarize" else sp.neg_()
    m.add_(reg, alpha=alpha).sub_(grad, alpha=step)


def _batches(n: int, opts: CalmOptions, gen: torch.Generator) -> list[torch.Tensor]:
    """`batches_per_task` shuffled index batches into n training samples."""
    perm = torch.randperm(n, generator=gen)
    out = []
    for i in range(opts.batches_per_task):
        if (i + 1) * opts.batch_size > n and i > 0:
            perm = torch.randperm(n, generator=gen)
            out.append(perm[: opts.batch_size])
        else:
            out.append(perm[i * opts.batch_size : (i + 1) * opts.batch_size])
    return out


Piece = tuple[str, torch.Tensor, torch.Tensor, float]  # (task, rows, labels, weight 1/|batch|)


def _pieces(ctx: MergeContext, seen: list[str], opts: CalmOptions,
            gen: torch.Generator) -> list[Piece]:
    out = []
    for name in seen:
        pseudo = ctx.pseudo(name)
        train = pseudo.train_index  # [S_tr] rows of the task's unlabeled images
        for idx in _batches(len(train), opts, gen):
            rows = train[idx]
            out.append((name, rows, pseudo.labels[rows], 1.0 / len(idx)))
    return out


def _micro_batches(pieces: list[Piece], size: int) -> list[list[Piece]]:
    """Cut the epoch's samples into micro-batches of `size` (a micro-batch may span tasks)."""
    out: list[list[Piece]] = [[]]
    room = size
    for name, rows, labels, w in pieces:
        start = 0
        while start < len(rows):
            if room == 0:
                out.append([])
                room = size
            take = min(room, len(rows) - start)
            out[-1].append((name, rows[start : start + take], labels[start : start + take], w))
            start, room = start + take, room - take
    return [mb for mb in out if mb]


def accumulate_gradient(ctx: MergeContext, theta: Params, buffers: Params, seen: list[str],
                        opts: CalmOptions, gen: torch.Generator, micro: int) -> torch.Tensor:
    """θ.grad += ∂L/∂θ over one epoch's batches, micro-batch by micro-batch. Returns L (device
    tensor). L = Σ_tasks Σ_batches mean CE = Σ_samples CE / |its batch|."""
    params = {**theta, **buffers}
    total = torch.zeros((), device=ctx.device)
    for mb in _micro_batches(_pieces(ctx, seen, opts, gen), micro):
        x = torch.cat([ctx.tasks[t].unlabeled.batch(rows, ctx.device) for t, rows, _, _ in mb])
        feats = visual_features(ctx.visual, params, x, ctx.bf16)  # [b, D]
        loss = feats.new_zeros(())
        start = 0
        for task, rows, labels, w in mb:
            logits = head_logits(feats[start : start + len(rows)], ctx.tasks[task].head)  # [n, C]
            loss = loss + w * F.cross_entropy(logits, labels.to(ctx.device), reduction="sum")
            start += len(rows)
        loss.backward()
        total += loss.detach()
    return total


@dataclass
class MaskTrainer:
    """One sequential step's fixed tensors (τ_seq, τ_s) and working buffer θ; runs mask
    states for some epochs and scores them on held-out pseudo-labels."""

    ctx: MergeContext
    tau_seq: Params
    tau_s: Params
    seen: list[str]
    opts: CalmOptions
    micro: int
    buffers: Params  # float buffers the forward runs with (empty for towers without)
    theta: Params = field(init=False)

    def __post_init__(self) -> None:
        self.theta = {k: torch.empty_like(v).requires_grad_(True) for k, v in self.tau_s.items()}

    def delta(self, k: str) -> torch.Tensor:
        return self.tau_s[k] - self.tau_seq[k]  # Δ, one tensor

    @torch.no_grad()
    def _fill(self, m: Params, binary: bool) -> None:
        """θ ← θ0 + τ_seq + σ(m)⊙Δ (soft), or θ0 + (1[m>0] ? τ_s : τ_seq) (binary, exact)."""
        theta0 = self.ctx.theta0
        for k, t in self.theta.items():
            if binary:
                torch.add(theta0[k], torch.where(m[k] > 0, self.tau_s[k], self.tau_seq[k]), out=t)
            else:
                torch.addcmul(theta0[k] + self.tau_seq[k], torch.sigmoid(m[k]), self.delta(k), out=t)

    def _step(self, st: MaskState, lr: float, relative: bool) -> None:
        """∂L/∂m = σ'(m)·Δ⊙∂L/∂θ, then the update (scale s fixed at the first non-zero epoch)."""
        wait = relative and st.scale is None  # the step needs s, which needs every gradient
        step = (lr / st.scale if st.scale else 0.0) if relative else lr
        grads: Params = {}
        with torch.no_grad():
            for k, m in st.m.items():
                g, self.theta[k].grad = self.theta[k].grad, None
                sp = sigmoid_prime(m)
                g = torch.zeros_like(m) if g is None else g.mul_(self.delta(k)).mul_(sp)  # in place
                if wait:
                    grads[k] = g
                else:  # σ'(m) computed once per tensor
                    mask_update(m, g, step, self.opts.regularizer, self.opts.alpha, sp)
            if not wait:
                return
            st.scale = gradient_scale(list(grads.values()), self.opts.grad_scale_top_fraction)
            step = lr / st.scale if st.scale else 0.0
            for k, m in st.m.items():
                mask_update(m, grads.pop(k), step, self.opts.regularizer, self.opts.alpha)

    def run(self, st: MaskState, lr: float, relative: bool, epochs: int, stage: str,
            total_epochs: int, note: str = "") -> None:
        """`epochs` more epochs of state `st`: progress is the share of these `epochs` done (in
        the caller's window); messages say "epoch e/total_epochs" of the state's own count."""
        for i in range(epochs):
            self.ctx.check_cancel()
            self._fill(st.m, binary=False)
            buffers = self.buffers if st.buffers is None else st.buffers
            st.loss = accumulate_gradient(self.ctx, self.theta, buffers, self.seen,
                                          self.opts, st.gen, self.micro)
            self._step(st, lr, relative)
            st.epoch += 1
            self._refresh_buffers(st)
            self.ctx.report(stage, (i + 1) / epochs, f"{note}epoch {st.epoch}/{total_epochs}",
                            lambda st=st: {"loss": float(st.loss) / len(self.seen),
                                           "mask_density": st.density()})

    def _refresh_buffers(self, st: MaskState) -> None:
        """Every `buffer_refresh_every` epochs, re-estimate the BatchNorm statistics the
        forward runs with for the current soft merge θ(m) on the seen tasks' unlabeled data
        (towers with buffers, policy 'reestimate'; a forward pass over ≤ 512 samples per task)."""
        every = self.opts.buffer_refresh_every
        if not (every and self.buffers and st.epoch % every == 0
                and self.ctx.resolved_buffer_policy() == "reestimate"):
            return
        self._fill(st.m, binary=False)
        with torch.no_grad():
            st.buffers = self.ctx.merged_buffers({k: v.detach() for k, v in self.theta.items()},
                                                 self.seen)

    def score(self, st: MaskState) -> float:
        """Mean held-out agreement over the seen tasks of the binarised merge."""
        self._fill(st.m, binary=True)
        agree = self.ctx.agreement_of({k: v.detach() for k, v in self.theta.items()}, self.seen)
        return sum(agree.values()) / len(agree)


def activation_bytes_per_image(ctx: MergeContext, params: Params, probe: int = 2) -> int:
    """Bytes autograd saves for backward per image (measured on a probe batch)."""
    images = ctx.tasks[next(iter(ctx.tasks))].unlabeled
    x = images.batch(torch.arange(min(probe, len(images))), ctx.device)
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        feats = visual_features(ctx.visual, params, x, ctx.bf16)
    del feats
    return max(1, saved // len(x))


def auto_micro_batch(ctx: MergeContext, params: Params) -> int:
    """Micro-batch size for the mask gradient: activations within half the free GPU memory,
    or within min(4 GiB, a quarter of the available RAM) on the CPU; 1..256."""
    per_image = activation_bytes_per_image(ctx, params)
    if ctx.device.type == "cuda":
        budget = torch.cuda.mem_get_info(ctx.device)[0] // 2
    else:
        budget = min(4 << 30, _available_ram() // 4)
    return int(max(1, min(256, budget // (2 * per_image))))  # 2x: gradients and temporaries


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def apply_mask(tau_seq: Params, tau_s: Params, mask: dict[str, torch.Tensor]) -> Params:
    """τ_seq ← (1−M)⊙τ_seq + M⊙τ_s with binary M, tensor by tensor (in place in the dict):
    each entry is exactly one of the two."""
    for k in tau_seq:
        tau_seq[k] = torch.where(mask[k], tau_s[k], tau_seq[k])
    return tau_seq
