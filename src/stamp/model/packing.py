"""Laying out the single-forward training sequence of a batch.

Each sample becomes one sequence in its own coordinates: its conversation tokens (padding dropped), then
one placeholder block per `<|seg|>`. Sequences are placed into rows either one per row (padded) or
several per row (packed, first-fit decreasing into rows no longer than the longest sample). Packing is
exact: a segment id per token keeps samples from attending to each other, and every sample keeps its own
position ids, so the losses equal the padded layout's while far fewer padding tokens are computed (on
SynthRef batches about 40% of a padded batch is padding).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SampleSequence:
    """One sample's tokens in its own coordinates (index 0 = its first real token)."""

    embeds: torch.Tensor  # (n, H)
    position_ids: torch.Tensor  # (3, n)
    block: torch.Tensor  # (n,) 0 text, j >= 1 placeholder block j
    limit: torch.Tensor  # (n,) last text index each token may see (own index / its `<|seg|>`)
    n_conv: int  # the first n_conv tokens are the conversation
    block_spans: list[tuple[int, int]] = field(default_factory=list)  # [start, end) of each block

    def __len__(self) -> int:
        return self.embeds.shape[0]


@dataclass
class Layout:
    """Rows ready for the decoder: (R, T) tensors, and where each sample sits (row, offset)."""

    embeds: torch.Tensor  # (R, T, H)
    position_ids: torch.Tensor  # (3, R, T)
    key_block: torch.Tensor  # (R, T), -1 on padding
    limit: torch.Tensor  # (R, T), in row coordinates
    segment: torch.Tensor  # (R, T), sample id, -1 on padding
    placement: list[tuple[int, int]]


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


def layout_rows(seqs: list[SampleSequence], plan: list[list[int]]) -> Layout:
    """Concatenate the planned sequences into padded rows (shifting each sample's limits)."""
    device = seqs[0].embeds.device
    width = max(sum(len(seqs[i]) for i in row) for row in plan)
    n_rows, hidden = len(plan), seqs[0].embeds.shape[-1]
    position_ids = torch.zeros((3, n_rows, width), dtype=torch.long, device=device)
    key_block = torch.full((n_rows, width), -1, dtype=torch.long, device=device)
    limit = torch.zeros((n_rows, width), dtype=torch.long, device=device)
    segment = torch.full((n_rows, width), -1, dtype=torch.long, device=device)
    placement: list[tuple[int, int]] = [(0, 0)] * len(seqs)
    pieces: list[list[torch.Tensor]] = [[] for _ in plan]
    for r, row in enumerate(plan):
        offset = 0
        for i in row:
            s, n = seqs[i], len(seqs[i])
            placement[i] = (r, offset)
            pieces[r].append(s.embeds)
            position_ids[:, r, offset : offset + n] = s.position_ids
            key_block[r, offset : offset + n] = s.block
            limit[r, offset : offset + n] = s.limit + offset
            segment[r, offset : offset + n] = i
            offset += n
    # the embeddings carry gradients: build each row with cat (no in-place writes into a leaf)
    rows = []
    for r in range(n_rows):
        row = torch.cat(pieces[r])
        rows.append(torch.cat([row, row.new_zeros((width - row.shape[0], hidden))]))
    embeds = torch.stack(rows)
    return Layout(embeds, position_ids, key_block, limit, segment, placement)
