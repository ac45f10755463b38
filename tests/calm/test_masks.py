"""Known answers for the mask step: init, update direction, binarised merge."""

import torch

from calm.methods.masks import apply_mask, init_logits, mask_update


def test_init_puts_plus_b_on_top_k_magnitudes() -> None:
    tau = {"a": torch.tensor([0.1, -9.0, 0.2]), "b": torch.tensor([[3.0, -0.5]])}
    m = init_logits(tau, sparsity=0.4, b=5.0)  # k = int(0.4*5) = 2 -> |-9| and |3|
    assert m["a"].tolist() == [-5.0, 5.0, -5.0]
    assert m["b"].tolist() == [[5.0, -5.0]]


def test_update_moves_against_gradient_and_binarize_pushes_away_from_zero() -> None:
    m = torch.tensor([0.5, -0.5, 0.5])
    grad = torch.tensor([1.0, -1.0, 0.0])
    before = m.clone()
    mask_update(m, grad, step=0.1, regularizer="binarize", alpha=0.0)
    assert m[0] < before[0] and m[1] > before[1] and m[2] == before[2]
    m2 = torch.tensor([0.5, -0.5])
    mask_update(m2, torch.zeros(2), step=1.0, regularizer="binarize", alpha=1.0)
    assert m2[0] > 0.5 and m2[1] < -0.5  # away from 0: binarises
    m3 = torch.tensor([0.5, -0.5])
    mask_update(m3, torch.zeros(2), step=1.0, regularizer="l1", alpha=1.0)
    assert m3[0] < 0.5 and m3[1] < -0.5  # toward M = 0: sparsifies


def test_update_equals_reference_formula() -> None:
    m = torch.tensor([0.3, -2.0, 4.0])
    g = torch.tensor([0.2, -0.7, 1.5])
    lr, alpha = 2.0, 0.5
    s = torch.sigmoid(m)
    expected = m - lr * g + alpha * torch.sign(m) * s * (1 - s)
    mask_update(m, g, lr, "binarize", alpha)
    torch.testing.assert_close(m, expected)


def test_binarised_merge_equals_formula() -> None:
    tau_seq = {"w": torch.tensor([1.0, 2.0, 3.0])}
    tau_s = {"w": torch.tensor([-1.0, -2.0, -3.0])}
    mask = {"w": torch.tensor([True, False, True])}
    merged = apply_mask(tau_seq, tau_s, mask)
    m = mask["w"].float()
    torch.testing.assert_close(merged["w"], (1 - m) * tau_seq["w"] + m * tau_s["w"])
    assert merged["w"].tolist() == [-1.0, 2.0, -3.0]
