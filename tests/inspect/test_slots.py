"""Keeping the entries with the largest keys per group, against a brute-force sort."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sae_gated_plugin.inspect.slots import Slots, select


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4), st.integers(0, 6)), max_size=40),
    st.integers(1, 5),
)
def test_select_keeps_the_largest_keys_of_each_group(
    entries: list[tuple[int, int]], size: int
) -> None:
    group = torch.tensor([g for g, _ in entries], dtype=torch.long)
    key = torch.tensor([float(k) for _, k in entries], dtype=torch.float64)
    entry, dest_group, rank = select(group, key, size)
    for g in set(group.tolist()):
        # ties go to the earlier entry
        expected = sorted((i for i, e in enumerate(entries) if e[0] == g), key=lambda i: -key[i])
        mine = entry[dest_group == g]
        assert mine.tolist() == expected[:size]
        assert rank[dest_group == g].tolist() == list(range(len(mine)))


def test_offer_merges_and_regroups() -> None:
    slots = Slots(groups=2, size=2, width=1)

    def window(i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return i[:, None] + 100, i[:, None].float()

    def offer(old: list[int], group: list[int], key: list[float]) -> None:
        g, k = torch.tensor(group, dtype=torch.long), torch.tensor(key, dtype=torch.float64)
        slots.offer(torch.tensor(old), g, [k, k.float(), g, g], window)

    offer([0, 1], [0, 0, 0, 1], [0.5, 0.9, 0.1, 0.3])
    assert slots.data[0].tolist() == [[0.9, 0.5], [0.3, -torch.inf]]
    assert slots.data[4][:, :, 0].tolist() == [[101, 100], [103, -1]]
    offer([0, 0], [], [])  # both groups merge into group 0
    assert slots.data[0].tolist() == [[0.9, 0.5], [-torch.inf, -torch.inf]]
    assert slots.data[4][0, :, 0].tolist() == [101, 100]
