"""Known answers for TIES (FusionBench's conventions), trimming and streaming task arithmetic."""

import pytest
import torch

from calm.methods.baselines import ties_merge, trim
from calm.task_vectors import TaskVectorSource


def test_trim_keeps_floor_density_times_p_plus_one_largest() -> None:
    """The TIES reference rule (FusionBench's topk_values_mask): ⌊density·P⌋ + 1 entries."""
    tau = {"a": torch.tensor([1.0, -4.0, 2.0]), "b": torch.tensor([-3.0, 0.5])}
    t = trim(tau, density=0.2)  # ⌊0.2·5⌋ + 1 = 2 of 5 entries: -4 and -3
    assert t["a"].tolist() == [0.0, -4.0, 0.0]
    assert t["b"].tolist() == [-3.0, 0.0]
    assert sum(int((v != 0).sum()) for v in trim(tau, density=1.0).values()) == 5


TAUS = [
    {"w": torch.tensor([1.0, -2.0, 3.0, 0.0])},
    {"w": torch.tensor([3.0, 1.0, -1.0, 0.0])},
    {"w": torch.tensor([-1.0, -4.0, 2.0, 0.0])},
]


@pytest.mark.parametrize(("merge_func", "expected"), [
    # elected signs [+, -, +, 0 -> majority +]; entry 3 has no positive entry -> 0
    ("mean", [2.0, -3.0, 2.5, 0.0]),  # mean of {1, 3}, {-2, -4}, {3, 2}
    ("sum", [4.0, -6.0, 5.0, 0.0]),
    ("max", [3.0, -4.0, 3.0, 0.0]),  # largest agreeing |v|, times the elected sign
])
def test_ties_elects_sign_and_merges_disjointly(merge_func: str, expected: list[float]) -> None:
    merged = ties_merge(lambda: iter(TAUS), density=1.0, merge_func=merge_func)
    assert merged["w"].tolist() == expected


def test_zero_election_takes_the_majority_sign() -> None:
    """Entry 0 cancels exactly (2 - 2 = 0); the vote over all entries is +2 vs -1, so it is
    elected positive and keeps task 1's value, as in FusionBench (it used to be dropped)."""
    taus = [{"w": torch.tensor([2.0, 1.0, 1.0, -5.0])}, {"w": torch.tensor([-2.0, 1.0, 1.0, 0.0])}]
    merged = ties_merge(lambda: iter(taus), density=1.0)
    assert merged["w"].tolist() == [2.0, 1.0, 1.0, -5.0]


def test_ties_trims_before_electing() -> None:
    # P = 4, density 0.25: each task keeps its 2 largest |τ|; entry 0 is trimmed in both tasks
    taus = [{"w": torch.tensor([0.3, 5.0, 3.0, 0.0])}, {"w": torch.tensor([-0.2, 4.0, 0.0, 1.0])}]
    merged = ties_merge(lambda: iter(taus), density=0.25)
    assert merged["w"].tolist() == [0.0, 4.5, 3.0, 1.0]


def test_streaming_sum_equals_in_memory(tmp_path, tiny_checkpoints) -> None:
    base, paths = tiny_checkpoints
    names = [n for n in base if n.startswith("visual.") and base[n].is_floating_point()]
    theta0 = {n: base[n].float() for n in names}
    src = TaskVectorSource(base, theta0, paths, torch.device("cpu"))
    streamed = src.stream_sum(list(paths))
    from calm.checkpoints import load_state_dict

    in_memory = {n: sum(load_state_dict(p)[n].float() - theta0[n] for p in paths.values()) for n in names}
    for n in names:
        torch.testing.assert_close(streamed[n], in_memory[n])
