"""The reference forward of STAMP for one sample: what a mask pass computes, stated plainly.

This is the specification. The packed training forward (`StampModel.stamp_forward`) and the cached,
batched generation (`stamp.inference.generation`) are faster ways to compute the same numbers, and the
tests hold both equal to this function.

For one conversation c_1 .. c_L holding one image of gh x gw merged cells (features F_1 .. F_N, N = gh*gw,
scattered into its `<|image_pad|>` tokens), with `<|seg|>` tokens at indices s_1 < ... < s_k:

    sequence   = c_1 .. c_L, then for each `<|seg|>` s_j a block P_j of N placeholders
    embeddings = the token embeddings of c (image tokens replaced by F), and for every block
                 E_mask_i = embed(`<|mask|>`) + F_i                       (`StampModel.mask_embeddings`)
    positions  = Qwen2-VL's M-RoPE ids for c; block P_j starts right after its `<|seg|>`:
                 `placeholder_position_ids(pos(s_j) + 1, (gh, gw), position_mode)`
    attention  = c is causal and never sees a placeholder; P_j sees c_1 .. c_{s_j} and, in "hybrid"
                 mode, every placeholder of P_j (bidirectional); blocks never see each other
                 (`build_hybrid_attention_mask`)
    outputs    = next-token logits of c (the text is the same as without any block) and, for each
                 `<|seg|>`, the classifier's FG/BG logit of each placeholder, as a (gh, gw) grid.

Nothing is cached, packed or batched: one (L + kN) x (L + kN) mask, one forward of the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stamp.model.attention import build_hybrid_attention_mask
from stamp.model.positions import placeholder_position_ids


@dataclass
class ReferenceOutput:
    text_logits: torch.Tensor
    """(L, V) next-token logits of the conversation."""
    mask_logits: list[torch.Tensor]
    """One (gh, gw) grid of FG/BG logits per `<|seg|>` of the conversation, in order."""


@torch.no_grad()
def reference_forward(
    model, input_ids: torch.Tensor, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor
) -> ReferenceOutput:
    """STAMP's forward for ONE sample (module docstring).

    Args:
        model: a StampModel.
        input_ids: (L,) the conversation, one image's `<|image_pad|>` tokens included, no padding.
        pixel_values / image_grid_thw: that image as the processor encodes it ((1, 3) grid).
    """
    settings, device = model.stamp, model.device
    ids = input_ids.view(1, -1).to(device)
    length = ids.shape[1]
    grid = image_grid_thw.view(1, 3).to(device)
    gh, gw = (int(grid[0, 1]) // model.merge_size, int(grid[0, 2]) // model.merge_size)

    # the conversation: token embeddings with the image's cell features at its image tokens
    (features,) = model.encode_images(pixel_values.to(device, model.dtype), grid)
    conversation = model.embed_conversation(ids, [features])[0]  # (L, H)
    image_tokens = (ids == model.config.image_token_id).long()
    everything = torch.ones_like(ids)
    text_pos = model.conversation_positions(ids, everything, image_tokens, grid)[:, 0]  # (3, L)

    # one block of N placeholders per <|seg|>, placed after it
    segs = (ids[0] == settings.seg_token_id).nonzero().flatten().tolist()
    n = gh * gw
    embeds, positions = [conversation], [text_pos]
    block = [torch.zeros(length, dtype=torch.long, device=device)]  # 0: conversation
    limit = [torch.arange(length, device=device)]  # a text token sees the text up to itself
    for j, s in enumerate(segs, start=1):
        embeds.append(model.mask_embeddings(features).to(conversation.dtype))
        positions.append(placeholder_position_ids(text_pos[0, s] + 1, (gh, gw), settings.position_mode))
        block.append(torch.full((n,), j, device=device))  # block j
        limit.append(torch.full((n,), s, device=device))  # sees the text up to its <|seg|>

    key_block = torch.cat(block).view(1, -1)
    index = torch.arange(key_block.shape[1], device=device).view(1, -1)
    allowed = build_hybrid_attention_mask(
        key_block, key_block, index, torch.cat(limit).view(1, -1), settings.attention_mode
    )
    hidden, _ = model.run_language_model(
        torch.cat(embeds).unsqueeze(0), torch.cat(positions, dim=1).unsqueeze(1), allowed
    )
    hidden = hidden[0]
    masks = [
        model.classifier(hidden[length + (j - 1) * n : length + j * n]).view(gh, gw).float()
        for j in range(1, len(segs) + 1)
    ]
    return ReferenceOutput(model.lm_head(hidden[:length]).float(), masks)
