"""The index bookkeeping of the single-forward training step, done once on the CPU.

Each sample becomes one sequence in its own coordinates: its conversation tokens (padding dropped), then
one placeholder block per `<|seg|>` (the cells of the last image before it). Sequences are placed into
rows (`stamp.model.packing.plan_rows`: one per row, or several per row), and everything the forward needs
to assemble those rows from the batch is expressed as index tensors:

    source = [conversation embeddings (B*L rows) ; placeholder embeddings (C rows) ; one zero row]
    row embeddings (R, T, H) = source[src_index]

with the rows' M-RoPE position ids, block ids, visibility limits and sample ids (the inputs of the hybrid
mask), where the text loss is taken, and where each placeholder's logit sits in the (M, N_max) output.

Why: built per sample on the accelerator, this bookkeeping costs thousands of tiny kernel launches and
hundreds of device-to-host synchronisations per step, leaving the GPU mostly idle
(`benchmarks/profile_train_step.py` shows it). Here it is plain Python and CPU tensors, and the device
receives one copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from stamp.model.packing import plan_rows
from stamp.model.positions import placeholder_position_ids


@dataclass
class SegBlock:
    """One `<|seg|>`: its sample, its index in the (padded) conversation, the image it segments."""

    sample: int
    seg_index: int
    image_index: int  # global index of the image in the batch
    grid_hw: tuple[int, int]


@dataclass
class BatchPlan:
    """Index tensors (CPU until `to`) that turn a collated batch into packed decoder rows."""

    src_index: torch.Tensor  # (R, T) into [conv (B*L) ; placeholders (C) ; zero row]
    position_ids: torch.Tensor  # (3, R, T)
    key_block: torch.Tensor  # (R, T): -1 padding, 0 text, j >= 1 placeholder block j of its sample
    limit: torch.Tensor  # (R, T): last text index (row coordinates) each token may see
    segment: torch.Tensor  # (R, T): sample id, -1 on padding
    cell_index: torch.Tensor  # (C,) row of each placeholder's image cell in the concatenated features
    ph_rows: torch.Tensor  # (C,) where each placeholder sits in the rows
    ph_cols: torch.Tensor  # (C,)
    ph_out: torch.Tensor  # (C,) its flat index into the (M, N_max) logits
    text_rows: torch.Tensor  # (n,) tokens that predict a labelled next token, and that token
    text_cols: torch.Tensor  # (n,)
    text_targets: torch.Tensor  # (n,)
    grids: torch.Tensor  # (M, 2) (gh, gw) of each `<|seg|>`, sample-major
    n_max: int  # N_max, the most cells of any mask in the batch
    n_image_tokens: int
    blocks: list[SegBlock] = field(default_factory=list)
    placement: list[tuple[int, int]] = field(default_factory=list)  # (row, offset) of each sample

    _DEVICE_FIELDS = (
        "src_index",
        "position_ids",
        "key_block",
        "limit",
        "segment",
        "cell_index",
        "ph_rows",
        "ph_cols",
        "ph_out",
        "text_rows",
        "text_cols",
        "text_targets",
        "grids",
    )

    @property
    def num_masks(self) -> int:
        return self.grids.shape[0]

    def to(self, device: torch.device | str) -> BatchPlan:
        """The same plan with its tensors on `device`, sent in ONE host-to-device copy."""
        device = torch.device(device)
        tensors = [getattr(self, name) for name in self._DEVICE_FIELDS]
        if all(t.device == device for t in tensors):
            return self
        flat = torch.cat([t.reshape(-1) for t in tensors]).to(device, non_blocking=True)
        moved, start = {}, 0
        for name, t in zip(self._DEVICE_FIELDS, tensors):
            moved[name] = flat[start : start + t.numel()].view(t.shape)
            start += t.numel()
        return BatchPlan(
            **moved,
            n_max=self.n_max,
            n_image_tokens=self.n_image_tokens,
            blocks=self.blocks,
            placement=self.placement,
        )


def image_mrope_positions(
    attention_mask: list[list[int]], mm_token_type_ids: list[list[int]], cells: list[tuple[int, int]]
) -> torch.Tensor:
    """(3, B, L) M-RoPE ids of a batch whose vision inputs are images, by Qwen2-VL's rule, in plain
    Python (no per-sample tensor ops; tests check it against transformers' `get_rope_index`).

    Over each sample's real tokens (padding gets 0): a run of text tokens counts on from the current
    position on all three axes; a run of image tokens (type 1) with (gh, gw) merged cells takes
    (t, h, w) = (p, p + row, p + col) for its cells in row-major order, and the text after it continues
    at p + max(gh, gw). `cells`: (gh, gw) of every image of the batch, in order.
    """
    batch = len(attention_mask)
    length = len(attention_mask[0]) if batch else 0
    n_image_tokens = sum(
        t == 1 for row, mask in zip(mm_token_type_ids, attention_mask) for t, m in zip(row, mask) if m
    )
    n_cells = sum(gh * gw for gh, gw in cells)
    if n_image_tokens != n_cells:
        raise ValueError(f"{n_image_tokens} image tokens in the batch but its images have {n_cells} cells")
    if any(t not in (0, 1) for row in mm_token_type_ids for t in row):
        raise ValueError(
            "only text (0) and image (1) tokens are supported by STAMP's training step, not video"
        )
    out = [[[0] * length for _ in range(batch)] for _ in range(3)]
    image = 0
    for b in range(batch):
        mask, types = attention_mask[b], mm_token_type_ids[b]
        pos, i = 0, 0
        real = [k for k in range(length) if mask[k]]
        while i < len(real):
            k = real[i]
            if types[k] != 1:
                out[0][b][k] = out[1][b][k] = out[2][b][k] = pos
                pos += 1
                i += 1
                continue
            gh, gw = cells[image]
            image += 1
            for cell in range(gh * gw):  # the run of this image's gh * gw image tokens
                k = real[i + cell]
                out[0][b][k], out[1][b][k], out[2][b][k] = pos, pos + cell // gw, pos + cell % gw
            pos += max(gh, gw)
            i += gh * gw
    return torch.tensor(out, dtype=torch.long).view(3, batch, length)


@dataclass(frozen=True)
class BatchPlanner:
    """`plan_batch` with a model's settings bound: small and picklable, so data-loader workers can plan
    each batch as they build it (`planner(batch)` for a collated batch dict)."""

    seg_token_id: int
    image_token_id: int
    merge_size: int
    position_mode: str
    with_blocks: bool = True
    pack: bool = True

    def __call__(self, batch: dict) -> BatchPlan:
        return plan_batch(
            batch["input_ids"],
            batch["attention_mask"],
            batch.get("mm_token_type_ids"),
            batch.get("image_grid_thw"),
            batch.get("labels"),
            seg_token_id=self.seg_token_id,
            image_token_id=self.image_token_id,
            merge_size=self.merge_size,
            position_mode=self.position_mode,
            with_blocks=self.with_blocks,
            pack=self.pack,
        )


def plan_batch(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mm_token_type_ids: torch.Tensor | None,
    image_grid_thw: torch.Tensor | None,
    labels: torch.Tensor | None,
    *,
    seg_token_id: int,
    image_token_id: int,
    merge_size: int,
    position_mode: str,
    with_blocks: bool = True,
    pack: bool = True,
) -> BatchPlan:
    """Plan one batch (all inputs on the CPU).

    `with_blocks=False` plans no placeholders (a model whose masks are not placeholders, e.g. text).
    Raises ValueError for a `<|seg|>` with no image before it.
    """
    batch, length = input_ids.shape
    ids = input_ids.tolist()
    attn = attention_mask.tolist()
    mm = mm_token_type_ids.tolist() if mm_token_type_ids is not None else [[0] * length] * batch
    grids_thw = image_grid_thw.tolist() if image_grid_thw is not None else []
    cells = [(t_h_w[1] // merge_size, t_h_w[2] // merge_size) for t_h_w in grids_thw]
    cell_offset = [0]
    for gh, gw in cells:
        cell_offset.append(cell_offset[-1] + gh * gw)
    conv_pos = image_mrope_positions(attn, mm, cells)

    # -- each sample: real tokens, its blocks, its length
    real: list[list[int]] = []
    blocks: list[list[SegBlock]] = []
    image_counter = 0
    for b in range(batch):
        real.append([i for i in range(length) if attn[b][i]])
        row_mm = mm[b]
        starts = [i for i in range(length) if row_mm[i] == 1 and (i == 0 or row_mm[i - 1] != 1)]
        mine = []
        if with_blocks:
            for i in (i for i in range(length) if ids[b][i] == seg_token_id):
                before = [k for k, s in enumerate(starts) if s < i]
                if not before:
                    raise ValueError(f"sample {b}: <|seg|> at position {i} has no image before it")
                img = image_counter + before[-1]
                mine.append(SegBlock(b, i, img, cells[img]))
        blocks.append(mine)
        image_counter += len(starts)
    lengths = [len(real[b]) + sum(k.grid_hw[0] * k.grid_hw[1] for k in blocks[b]) for b in range(batch)]
    rows = plan_rows(lengths, pack)
    width = max(sum(lengths[i] for i in row) for row in rows)
    n_rows = len(rows)
    all_blocks = [k for per in blocks for k in per]
    n_cells = sum(k.grid_hw[0] * k.grid_hw[1] for k in all_blocks)
    pad_source = batch * length + n_cells

    src_index = torch.full((n_rows, width), pad_source, dtype=torch.long)
    position_ids = torch.zeros((3, n_rows, width), dtype=torch.long)
    key_block = torch.full((n_rows, width), -1, dtype=torch.long)
    limit = torch.zeros((n_rows, width), dtype=torch.long)
    segment = torch.full((n_rows, width), -1, dtype=torch.long)
    placement: list[tuple[int, int]] = [(0, 0)] * batch
    for r, row in enumerate(rows):
        offset = 0
        for b in row:
            placement[b] = (r, offset)
            offset += lengths[b]

    n_max = max((k.grid_hw[0] * k.grid_hw[1] for k in all_blocks), default=0)
    cell_index, ph_rows, ph_cols, ph_out = [], [], [], []
    text_rows, text_cols, text_targets = [], [], []
    lab = labels.tolist() if labels is not None else None
    block_source = batch * length
    m = 0
    for b in range(batch):
        r, o = placement[b]
        idx = real[b]
        n_conv = len(idx)
        index_of = {p: k for k, p in enumerate(idx)}  # padded index -> index among real tokens
        sl = slice(o, o + n_conv)
        src_index[r, sl] = torch.tensor([b * length + p for p in idx], dtype=torch.long)
        position_ids[:, r, sl] = conv_pos[:, b, idx]
        key_block[r, sl] = 0
        limit[r, sl] = torch.arange(o, o + n_conv)
        segment[r, o : o + lengths[b]] = b
        if lab is not None and n_conv > 1:
            nxt = [lab[b][p] for p in idx[1:]]
            keep = [k for k, v in enumerate(nxt) if v != -100]
            text_rows.extend([r] * len(keep))
            text_cols.extend(o + k for k in keep)
            text_targets.extend(nxt[k] for k in keep)
        start = o + n_conv
        for j, blk in enumerate(blocks[b]):
            gh, gw = blk.grid_hw
            n = gh * gw
            sl = slice(start, start + n)
            src_index[r, sl] = torch.arange(block_source, block_source + n)
            seg_pos = int(conv_pos[:, b, blk.seg_index].max())
            position_ids[:, r, sl] = placeholder_position_ids(seg_pos + 1, (gh, gw), position_mode)
            key_block[r, sl] = j + 1
            limit[r, sl] = o + index_of[blk.seg_index]
            first = cell_offset[blk.image_index]
            cell_index.extend(range(first, first + n))
            ph_rows.extend([r] * n)
            ph_cols.extend(range(start, start + n))
            ph_out.extend(range(m * n_max, m * n_max + n))
            block_source += n
            start += n
            m += 1

    def longs(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long)

    return BatchPlan(
        src_index=src_index,
        position_ids=position_ids,
        key_block=key_block,
        limit=limit,
        segment=segment,
        cell_index=longs(cell_index),
        ph_rows=longs(ph_rows),
        ph_cols=longs(ph_cols),
        ph_out=longs(ph_out),
        text_rows=longs(text_rows),
        text_cols=longs(text_cols),
        text_targets=longs(text_targets),
        grids=longs([list(k.grid_hw) for k in all_blocks]).view(-1, 2),
        n_max=n_max,
        n_image_tokens=sum(v == image_token_id for row in ids for v in row),
        blocks=all_blocks,
        placement=placement,
    )
