"""Shared linear algebra of the singular-vector merges (TSV-M, Iso-CTS): which tensors are
treated as matrices, the polar factor, and the per-task blocks of singular triplets that both
methods concatenate before re-orthogonalising."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch


def is_matrix(name: str, v: torch.Tensor, exclude: Collection[str]) -> bool:
    """A 2-D tensor not excluded by name: merged in its singular-vector space. Every other
    tensor (biases, norms, class token, 4-D convolutions) is averaged over the tasks."""
    return v.ndim == 2 and name not in exclude


def polar(a: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor U·Vᵀ of a = U·S·Vᵀ (the nearest matrix with orthonormal
    columns, or rows), computed on a's device. a: [m, k] -> [m, k]."""
    u, _, vh = torch.linalg.svd(a, full_matrices=False)  # [m, q], [q], [q, k]
    return u @ vh


@dataclass
class Blocks:
    """Singular triplets of one layer laid side by side: slot i holds task i's top-k triplets."""

    u: torch.Tensor  # [m, r] left singular vectors, r = min(m, n)
    s: torch.Tensor  # [r] singular values
    vh: torch.Tensor  # [r, n] right singular vectors (rows)

    @classmethod
    def like(cls, w: torch.Tensor) -> Blocks:
        m, n = w.shape
        r = min(m, n)
        return cls(w.new_zeros(m, r), w.new_zeros(r), w.new_zeros(r, n))

    def put(self, start: int, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> None:
        """Place k triplets (u [m, k], s [k], vh [k, n]) at columns/rows start..start+k."""
        k = s.shape[0]
        if start + k > self.s.shape[0]:
            raise ValueError(f"blocks overflow the rank: {start}+{k} > {self.s.shape[0]}")
        self.u[:, start:start + k] = u
        self.s[start:start + k] = s
        self.vh[start:start + k] = vh

    def put_top(self, slot: int, k: int, w: torch.Tensor) -> None:
        """Slot `slot` (width k) takes the top-k singular triplets of w [m, n]."""
        u, s, vh = torch.linalg.svd(w, full_matrices=False)  # [m, r], [r], [r, n]
        self.put(slot * k, u[:, :k], s[:k], vh[:k])

    def orthogonalized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(polar(U) [m, r], polar(Vh) [r, n]): the blocks of different tasks made mutually
        orthogonal with the least change (Procrustes)."""
        return polar(self.u), polar(self.vh)
