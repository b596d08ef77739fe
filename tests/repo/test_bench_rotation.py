"""GPU input rotation of the benchmarks (benchmarks/conftest.py): the set count and the cycling order."""

import torch

from benchmarks.conftest import DEVICE, input_sets, rotating, rotation_count


def test_rotation_count_exceeds_twice_the_cache_and_is_capped():
    mib = 1 << 20
    for set_bytes in (1, 3 * mib, 7 * mib, 50 * mib, 101 * mib, 400 * mib):
        count = rotation_count(set_bytes, 50 * mib, max_sets=1 << 30)
        assert count * set_bytes > 100 * mib
        assert count == 1 or (count - 1) * set_bytes <= 100 * mib  # the fewest that do
    assert rotation_count(1, 50 * mib, max_sets=32) == 32
    assert rotation_count(0, 50 * mib, max_sets=32) == 32


def test_rotating_cycles_through_the_sets_in_order():
    sets = [[torch.tensor(float(i))] for i in range(3)]
    run = rotating(lambda t: t.item(), sets)
    assert [run() for _ in range(7)] == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0]


def test_input_sets_on_cpu_is_the_inputs_themselves():
    if DEVICE.type == "cuda":
        tensors = [torch.randn(4, device=DEVICE, requires_grad=True), None]
        sets = input_sets(tensors)
        assert sets[0] is tensors and len(sets) > 1
        assert all(s[1] is None and s[0].requires_grad and torch.equal(s[0], tensors[0]) for s in sets)
    else:
        tensors = [torch.randn(4), None]
        assert input_sets(tensors) == [tensors]
