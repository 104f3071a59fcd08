"""target_slots: the padded (image, slot) position of every box, built on the host without torch's thread pool,
equal to the ``repeat_interleave`` formulation it replaces."""

import pytest
import torch

from neo_rtdetr.utils.target_slots import target_slots


@pytest.mark.parametrize("sizes, repeats", [
    ([3, 0, 2], 1), ([3, 0, 2], 4), ([0, 0], 2), ([], 1), ([1], 1), ([5, 1, 0, 7], 3),
])
def test_matches_the_repeat_interleave_formulation(sizes, repeats):
    slots = target_slots(sizes, repeats)
    assert slots.shape == (2, sum(sizes) * repeats)
    image_idx, slot_idx = slots
    expected_image = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes, dtype=torch.int64) * repeats)
    expected_slot = torch.cat([torch.arange(n).repeat(repeats) for n in sizes] + [torch.zeros(0, dtype=torch.int64)])
    assert image_idx.dtype == slot_idx.dtype == torch.int64
    assert torch.equal(image_idx, expected_image) and torch.equal(slot_idx, expected_slot)


def test_tiles_each_image_run_in_order():
    image_idx, slot_idx = target_slots([2, 1], 2)  # (the two rows of the [2, N] result)
    assert image_idx.tolist() == [0, 0, 0, 0, 1, 1]
    assert slot_idx.tolist() == [0, 1, 0, 1, 0, 0]


@pytest.mark.parametrize("sizes, repeats, message", [
    ([2, -1], 1, "must be >= 0"), ([2], 0, "repeats >= 1"), ([2.7, 1], 1, "must be integers"),
])
def test_refuses_bad_counts(sizes, repeats, message):
    with pytest.raises(ValueError, match=message):
        target_slots(sizes, repeats)
