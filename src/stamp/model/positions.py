"""M-RoPE position ids of the placeholder block.

Qwen2-VL gives every token three position ids (t, h, w). Text tokens use the same value on all three
axes; an image placed at the next free position s gets (s, s + row, s + col) for its merged cells, and
the text after it resumes at s + max(gh, gw).

STAMP's placeholders are one per merged cell. Two placements (config `position_mode`):
    grid: the block is placed right after `<|seg|>` the way Qwen2-VL places an image, so each
          placeholder's ids mark its cell (the paper: "position encodings that mark its grid location").
    text: plain 1-D positions s, s+1, ..., s+N-1 on all three axes (what the authors' released
          checkpoints were trained with).
In both, s = position of `<|seg|>` + 1 and the answer text after `<|seg|>` continues from s (the
placeholders never enter the text stream).
"""

from __future__ import annotations

import torch

POSITION_MODES = ("grid", "text")


def placeholder_position_ids(
    start: int | torch.Tensor, grid_hw: tuple[int, int], mode: str = "grid"
) -> torch.Tensor:
    """Position ids of one placeholder block.

    Args:
        start: s, the position id following `<|seg|>` (a python int or 0-d tensor).
        grid_hw: (gh, gw), merged cells of the image (gh * gw placeholders, row-major).
        mode: "grid" or "text".

    Returns:
        (3, gh * gw) long tensor of (t, h, w) ids.

    Example: start=10, grid (2, 3)
        grid -> t: [10,10,10,10,10,10]  h: [10,10,10,11,11,11]  w: [10,11,12,10,11,12]
        text -> all three rows [10,11,12,13,14,15]
    """
    gh, gw = int(grid_hw[0]), int(grid_hw[1])
    device = start.device if isinstance(start, torch.Tensor) else None
    start = int(start)
    if mode == "grid":
        rows = torch.arange(gh, device=device).repeat_interleave(gw)
        cols = torch.arange(gw, device=device).repeat(gh)
        t = torch.zeros_like(rows)
        return torch.stack([t, rows, cols]) + start
    if mode == "text":
        return (torch.arange(gh * gw, device=device) + start).view(1, -1).expand(3, -1).clone()
    raise ValueError(f"position mode must be one of {POSITION_MODES}, got {mode!r}")
