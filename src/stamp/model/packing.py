"""Packing the single-forward training sequences of a batch into rows.

Each sample becomes one sequence in its own coordinates: its conversation tokens (padding dropped), then
one placeholder block per `<|seg|>` (`stamp.model.batch_plan` builds them). Sequences are placed into rows
either one per row (padded) or several per row (packed, first-fit decreasing into rows no longer than the
longest sample). Packing is exact: a segment id per token keeps samples from attending to each other, and
every sample keeps its own position ids, so the losses equal the padded layout's while far fewer padding
tokens are computed (SynthRef's varied answer lengths leave much of a padded batch as padding).
"""

from __future__ import annotations


def plan_rows(lengths: list[int], pack: bool) -> list[list[int]]:
    """Which samples share a row. Unpacked: one per row. Packed: first-fit decreasing into rows of
    capacity max(lengths), so no row is longer than the padded layout's."""
    if not pack or not lengths:
        return [[i] for i in range(len(lengths))]
    capacity = max(lengths)
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
        for r, space in enumerate(free):
            if lengths[i] <= space:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(capacity - lengths[i])
    return rows
