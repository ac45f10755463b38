"""Float buffers of the image tower (BatchNorm running statistics) for merged models.

Task vectors only cover parameters. A tower with BatchNorm fine-tuned in train mode carries its
own running statistics per checkpoint; a merged model needs statistics that match its merged
weights. `reestimate` recomputes them the standard way (as after SWA or model soups): run the
merged tower in BN train mode over unlabeled inputs with a cumulative average (momentum None).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch.func import functional_call

from calm.forward import PREFIX, Params, autocast
from calm.images import HostImages


def float_buffer_names(model: torch.nn.Module) -> list[str]:
    """Persistent float buffers of the image tower (`visual.*`), as state-dict names."""
    state = model.state_dict(keep_vars=True)
    return [n for n, b in model.named_buffers()
            if n.startswith(PREFIX) and b.is_floating_point() and n in state]


def average(buffers: Sequence[Params]) -> Params:
    """Entry-wise mean of several checkpoints' buffers."""
    return {k: torch.stack([b[k] for b in buffers]).mean(dim=0) for k in buffers[0]}


def differ(a: Params, b: Params) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


@contextmanager
def _bn_cumulative(visual: torch.nn.Module) -> Iterator[list[torch.nn.modules.batchnorm._BatchNorm]]:
    """BatchNorm layers in train mode with a cumulative average; restored afterwards."""
    bns = [m for m in visual.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.momentum) for m in bns]
    for m in bns:
        m.train()
        m.momentum = None
    try:
        yield bns
    finally:
        for m, (training, momentum) in zip(bns, saved, strict=True):
            m.train(training)
            m.momentum = momentum


@torch.no_grad()
def reestimate(visual: torch.nn.Module, params: Params, template: Params,
               sources: Sequence[tuple[HostImages, torch.Tensor]], batch_size: int,
               device: torch.device, bf16: bool = False, seed: int = 0) -> Params:
    """Float buffers of `visual` run with `params`, re-estimated over the rows `index` of each
    (images, index) source, drawn in seeded mixed batches. `template` names the buffers."""
    names = {PREFIX + n: m for n, m in visual.named_modules()}
    fresh: Params = {}
    with _bn_cumulative(visual) as bns:
        for k, v in template.items():
            fresh[k] = torch.zeros_like(v) if k.endswith("running_mean") else torch.ones_like(v)
        for m in bns:  # the step counter drives the cumulative average
            prefix = next(n for n, mod in names.items() if mod is m)
            fresh[f"{prefix}.num_batches_tracked"] = torch.zeros((), dtype=torch.long, device=device)
        local = {k[len(PREFIX):]: v for k, v in {**params, **fresh}.items()}
        rows = [(i, int(j)) for i, (_, index) in enumerate(sources) for j in index]
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
        for start in range(0, len(rows), batch_size):
            chunk = [rows[int(o)] for o in order[start : start + batch_size]]
            if len(chunk) < 2:
                continue  # BatchNorm needs two samples
            x = torch.cat([sources[i][0].batch(torch.tensor([j for s, j in chunk if s == i]), device)
                           for i in sorted({s for s, _ in chunk})])  # [b, 3, H, W]
            with autocast(device, bf16):
                functional_call(visual, local, (x,), strict=False)
    return {k: fresh[k] for k in template}
