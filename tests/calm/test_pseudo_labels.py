"""Known answers for class-balanced entropy-minimisation sampling."""

import torch

from calm.pseudo_labels import entropy, select_class_balanced, select_global


def _logits(rows: list[tuple[int, float]]) -> torch.Tensor:
    """One row per sample: (predicted class, confidence logit) over 2 classes."""
    out = torch.zeros(len(rows), 2)
    for i, (c, conf) in enumerate(rows):
        out[i, c] = conf
    return out


def test_entropy_is_lower_for_confident_rows() -> None:
    e = entropy(torch.tensor([[10.0, 0.0], [0.1, 0.0]]))
    assert e[0] < e[1]
    assert torch.allclose(entropy(torch.zeros(1, 4)), torch.log(torch.tensor([4.0])))


def test_class_balanced_keeps_ratio_per_predicted_class() -> None:
    # class 0: confidences 9, 1, 5, 3 ; class 1: 8, 2
    logits = _logits([(0, 9.0), (0, 1.0), (1, 8.0), (0, 5.0), (1, 2.0), (0, 3.0)])
    p = select_class_balanced(logits, ratio=0.5)
    assert p.labels.tolist() == [0, 0, 1, 0, 1, 0]
    # class 0 keeps int(4*0.5)=2 lowest-entropy (conf 9 -> idx 0, conf 5 -> idx 3); class 1 keeps 1 (idx 2)
    assert p.selected.tolist() == [0, 2, 3]
    assert p.selected_labels.tolist() == [0, 1, 0]


def test_class_balanced_keeps_at_least_one_per_class() -> None:
    logits = _logits([(0, 9.0), (0, 8.0), (0, 7.0), (1, 0.5)])
    p = select_class_balanced(logits, ratio=0.1)
    assert p.selected.tolist() == [0, 3]


def test_global_selection_can_drop_a_whole_class() -> None:
    logits = _logits([(0, 9.0), (0, 8.0), (0, 7.0), (1, 0.5)])
    p = select_global(logits, ratio=0.5)
    assert p.selected.tolist() == [0, 1]
    assert set(p.selected_labels.tolist()) == {0}
