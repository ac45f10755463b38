"""Training loops of the digits suite: contrastive pretraining, head-frozen fine-tuning, accuracy.

Everything is seeded and runs on CPU in seconds to minutes (tiny ViT, 16x16 inputs).
"""

from __future__ import annotations

import math

import open_clip
import torch
import torch.nn.functional as F

from bench.digits_tasks import Attribute
from calm.heads import logits


def _seed(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def jitter(images: torch.Tensor, gen: torch.Generator, pixels: int = 1) -> torch.Tensor:
    """Mild augmentation: a random translation by up to `pixels` per image.
    images [B, 3, H, W] -> [B, 3, H, W] (edge-replicated borders)."""
    b, _, h, w = images.shape
    padded = F.pad(images, (pixels,) * 4, mode="replicate")  # [B, 3, H+2p, W+2p]
    dy, dx = torch.randint(0, 2 * pixels + 1, (2, b, 1, 1), generator=gen)
    ys = torch.arange(h).view(1, h, 1) + dy  # [B, H, 1]
    xs = torch.arange(w).view(1, 1, w) + dx  # [B, 1, W]
    rows = torch.arange(b).view(b, 1, 1)
    return padded.permute(0, 2, 3, 1)[rows, ys, xs].permute(0, 3, 1, 2).contiguous()


def _cosine_lr(opt: torch.optim.Optimizer, base: float, step: int, total: int) -> None:
    warm = max(1, total // 20)
    scale = (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * step / total))
    for group in opt.param_groups:
        group["lr"] = base * scale


def caption_table(
    tokenizer: open_clip.tokenizer.SimpleTokenizer, attributes: list[Attribute]
) -> tuple[torch.Tensor, torch.Tensor]:
    """All pretraining captions. -> tokens [S, L], match [10, S] (digit d fits caption s)."""
    texts, match = [], []
    for attr in attributes:
        for caption, k in attr.captions():
            texts.append(caption)
            match.append([attr.classes[d] == k for d in range(10)])
    return tokenizer(texts), torch.tensor(match, dtype=torch.float32).t()


def pretrain(
    model: open_clip.CLIP,
    images: torch.Tensor,
    digits: torch.Tensor,
    tokens: torch.Tensor,
    match: torch.Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> list[float]:
    """CLIP loss with several positives, both towers trained. Each step contrasts a batch of
    images [B, 3, H, W] (from images [N, 3, H, W]) with every caption [S, L]: image->text targets
    are uniform over the captions the digit fits, text->image targets uniform over the fitting
    images (a caption describes many digits, so one-hot CLIP targets would be wrong)."""
    gen = _seed(seed)
    # The [49408, W] token embedding stays at its random init: a dense AdamW step over it would
    # cost more than the forward pass, and random embeddings of the few words used are distinct.
    params = [p for n, p in model.named_parameters() if n != "token_embedding.weight"]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    model.train()
    losses = []
    for step in range(steps):
        _cosine_lr(opt, lr, step, steps)
        idx = torch.randint(0, len(images), (batch_size,), generator=gen)
        img = F.normalize(model.encode_image(jitter(images[idx], gen)), dim=-1)  # [B, D]
        txt = F.normalize(model.encode_text(tokens), dim=-1)  # [S, D]
        sim = model.logit_scale.exp() * img @ txt.t()  # [B, S]
        pos = match[digits[idx]]  # [B, S]
        i2t = -(pos / pos.sum(1, keepdim=True) * sim.log_softmax(1)).sum(1).mean()
        has = pos.sum(0) > 0  # captions with a fitting image in this batch
        t2i = -(pos / pos.sum(0).clamp(min=1) * sim.log_softmax(0)).sum(0)[has].mean()
        loss = (i2t + t2i) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
    model.eval()
    return losses


def finetune(
    model: open_clip.CLIP,
    head: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> list[float]:
    """Cross-entropy on the image tower only; head [C, D] frozen, text tower untouched.
    images [N, 3, H, W], labels [N]."""
    gen = _seed(seed)
    opt = torch.optim.AdamW(model.visual.parameters(), lr=lr, weight_decay=0.01)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    total = epochs * steps_per_epoch
    model.train()
    losses = []
    for step in range(total):
        if step % steps_per_epoch == 0:
            order = torch.randperm(len(images), generator=gen)
        _cosine_lr(opt, lr, step, total)
        idx = order[(step % steps_per_epoch) * batch_size :][:batch_size]
        out = logits(model.encode_image(jitter(images[idx], gen)), head)  # [B, C]
        loss = F.cross_entropy(out, labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def accuracy(
    model: open_clip.CLIP, head: torch.Tensor, images: torch.Tensor, labels: torch.Tensor
) -> float:
    """Top-1 accuracy of head [C, D] on images [N, 3, H, W] with labels [N]."""
    model.eval()
    preds = torch.cat([logits(model.encode_image(x), head).argmax(1) for x in images.split(512)])
    return (preds == labels).float().mean().item()
