"""Step 1 of CALM: class-balanced entropy-minimisation sampling of pseudo-labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PseudoLabels:
    """For one task: argmax predictions of its individual model on ALL unlabeled inputs, and
    the indices selected for mask training (low-entropy, class-balanced)."""

    labels: torch.Tensor  # [N] int64, predictions for every unlabeled input
    selected: torch.Tensor  # [S] int64 indices into the unlabeled inputs

    @property
    def selected_labels(self) -> torch.Tensor:
        return self.labels[self.selected]


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
