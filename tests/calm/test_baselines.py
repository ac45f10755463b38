"""Known answers for TIES, trimming and streaming task arithmetic."""

import torch

from calm.methods.baselines import ties_merge, trim
from calm.task_vectors import TaskVectorSource


def test_trim_keeps_top_density_by_magnitude() -> None:
    tau = {"a": torch.tensor([1.0, -4.0, 2.0]), "b": torch.tensor([-3.0, 0.5])}
    t = trim(tau, density=0.4)  # 2 of 5 entries: -4 and -3
    assert t["a"].tolist() == [0.0, -4.0, 0.0]
    assert t["b"].tolist() == [-3.0, 0.0]


def test_ties_elects_sign_and_takes_disjoint_mean() -> None:
    taus = [
        {"w": torch.tensor([1.0, -2.0, 3.0, 0.0])},
        {"w": torch.tensor([3.0, 1.0, -1.0, 0.0])},
        {"w": torch.tensor([-1.0, -4.0, 2.0, 0.0])},
    ]
    merged = ties_merge(lambda: iter(taus), density=1.0)
    # entry 0: sum 3 > 0 -> mean of {1, 3} = 2; entry 1: sum -5 -> mean of {-2, -4} = -3;
    # entry 2: sum 4 -> mean of {3, 2} = 2.5; entry 3: nobody -> 0
    assert merged["w"].tolist() == [2.0, -3.0, 2.5, 0.0]


def test_ties_trims_before_electing() -> None:
    taus = [{"w": torch.tensor([0.1, 5.0])}, {"w": torch.tensor([-0.2, 4.0])}]
    merged = ties_merge(lambda: iter(taus), density=0.5)
    assert merged["w"].tolist() == [0.0, 4.5]


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
