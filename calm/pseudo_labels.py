"""Step 1 of CALM: class-balanced entropy-minimisation sampling of pseudo-labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PseudoLabels:
    """For one task: argmax predictions of its individual model on ALL unlabeled inputs, the
    indices selected as confident (low-entropy, class-balanced), and their split into the share
    masks train on and the held-out share every selection (λ, lr, plan) is scored on."""

    labels: torch.Tensor  # [N] int64, predictions for every unlabeled input
    selected: torch.Tensor  # [S] int64 indices into the unlabeled inputs
    train: torch.Tensor | None = None  # [S_tr] ⊆ selected; None: all of selected
    holdout: torch.Tensor | None = None  # [S_ho] ⊆ selected, disjoint from train

    @property
    def selected_labels(self) -> torch.Tensor:
        return self.labels[self.selected]

    @property
    def train_index(self) -> torch.Tensor:
        return self.selected if self.train is None else self.train

    @property
    def holdout_index(self) -> torch.Tensor:
        """Held-out indices; all selected ones when nothing was held out."""
        return self.selected if self.holdout is None or not len(self.holdout) else self.holdout


def hold_out(pseudo: PseudoLabels, share: float, seed: int) -> PseudoLabels:
    """Split `selected` into train / held-out, stratified by pseudo-class: in each class a
    seeded `share` (rounded, at least one when the class has two or more) is held out."""
    if share <= 0:
        return PseudoLabels(pseudo.labels, pseudo.selected, pseudo.selected, pseudo.selected[:0])
    gen = torch.Generator().manual_seed(seed)
    train, held = [], []
    sel_labels = pseudo.labels[pseudo.selected]
    for c in sel_labels.unique(sorted=True):
        idx = pseudo.selected[sel_labels == c]  # [n_c]
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = min(len(idx) - 1, max(1, round(share * len(idx)))) if len(idx) > 1 else 0
        held.append(idx[:k])
        train.append(idx[k:])
    return PseudoLabels(pseudo.labels, pseudo.selected, torch.sort(torch.cat(train)).values,
                        torch.sort(torch.cat(held)).values)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """logits [N, C] -> prediction entropy [N]."""
    logp = torch.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(dim=1)


def _keep(n: int, ratio: float) -> int:
    return max(1, int(n * ratio)) if n else 0


def select_class_balanced(logits: torch.Tensor, ratio: float) -> PseudoLabels:
    """Per predicted class, keep the `ratio` fraction (at least one) with the lowest entropy."""
    labels = logits.argmax(dim=1)
    ent = entropy(logits)
    keep = []
    for c in labels.unique(sorted=True):
        idx = (labels == c).nonzero().flatten()  # [n_c]
        order = torch.argsort(ent[idx], stable=True)
        keep.append(idx[order[: _keep(len(idx), ratio)]])
    selected = torch.sort(torch.cat(keep)).values
    return PseudoLabels(labels=labels.cpu(), selected=selected.cpu())


def select_global(logits: torch.Tensor, ratio: float) -> PseudoLabels:
    """Non-balanced option: the `ratio` fraction with the lowest entropy overall."""
    labels = logits.argmax(dim=1)
    order = torch.argsort(entropy(logits), stable=True)
    selected = torch.sort(order[: _keep(len(labels), ratio)]).values
    return PseudoLabels(labels=labels.cpu(), selected=selected.cpu())


def select(logits: torch.Tensor, ratio: float, class_balanced: bool = True) -> PseudoLabels:
    return (select_class_balanced if class_balanced else select_global)(logits, ratio)
