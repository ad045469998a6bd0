"""STAMP on top of transformers' Qwen2-VL / Qwen2.5-VL classes.

`StampModel` is a mixin that adds STAMP to a stock `...ForConditionalGeneration`: the `classifier`
head (Linear(hidden, 1), one FG/BG logit per placeholder), the visually-enhanced placeholder embeddings,
the hybrid attention mask, and the single-forward training step. The concrete classes subclass the
transformers classes directly, so parameter names are exactly those of the authors' checkpoints
(`model.language_model.*`, `model.visual.*`, `lm_head.*`, `classifier.*`) and `save_pretrained` /
`from_pretrained` / PEFT work unchanged.

Training step (one forward, several `<|seg|>` per sample, the vision tower once):
    sequence = [conversation (L)] + [N_1 placeholders of seg 1] + ... + [N_k of seg k]
    block j sees the conversation up to its `<|seg|>` and itself; the conversation never sees blocks.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration
from transformers.utils import ModelOutput

from stamp.model.attention import SUPPORTED_ATTN_IMPLEMENTATIONS, build_hybrid_attention_mask, to_backend_mask
from stamp.model.config import StampSettings
from stamp.model.losses import mask_losses, text_loss_at
from stamp.model.packing import Layout, SampleSequence, layout_rows, plan_rows
from stamp.model.positions import placeholder_position_ids


@dataclass
class StampOutput(ModelOutput):
    """Result of `StampModel.stamp_forward`.

    loss: weighted total; text_loss / bce_loss / dice_loss: the unweighted parts.
    mask_logits: (M, N_max) placeholder logits of the M `<|seg|>` in the batch (sample-major order),
        padded with 0 where a mask has fewer than N_max cells; mask_grids: (M, 2) (gh, gw) of each.
    """

    loss: torch.Tensor | None = None
    text_loss: torch.Tensor | None = None
    bce_loss: torch.Tensor | None = None
    dice_loss: torch.Tensor | None = None
    mask_logits: torch.Tensor | None = None
    mask_grids: torch.Tensor | None = None


@dataclass
class PlaceholderBlock:
    """The placeholders of one `<|seg|>`: where it is, which image it segments, and its inputs."""

    seg_index: int  # index of `<|seg|>` in the conversation
    image_index: int  # global index of the image (into the list of image features)
    grid_hw: tuple[int, int]
    embeds: torch.Tensor  # (N, H)
    position_ids: torch.Tensor  # (3, N)


class StampModel:
    """STAMP methods shared by the concrete backbone classes (use `StampModel.from_pretrained` / `tiny`)."""

    classifier: nn.Linear

    def _init_stamp(self, config) -> None:
        if not hasattr(config, "stamp"):
            raise ValueError(
                "the model config has no 'stamp' settings; load checkpoints with StampModel.from_pretrained"
            )
        self.stamp = StampSettings.from_dict(dict(config.stamp))
        self.classifier = nn.Linear(config.text_config.hidden_size, 1)
        nn.init.normal_(self.classifier.weight, std=getattr(config.text_config, "initializer_range", 0.02))
        nn.init.zeros_(self.classifier.bias)
        self.processor = None  # a StampProcessor, attached by from_pretrained / tiny

    # ----------------------------------------------------------------- loading (see stamp.model.loading)
    @classmethod
    def from_pretrained(cls, path, **kwargs):
        """Load a STAMP model from a local directory (see `stamp.model.loading.load_stamp_model`)."""
        from stamp.model.loading import load_stamp_model

        return load_stamp_model(path, **kwargs)

    @classmethod
    def tiny(cls, seed: int = 0, **kwargs):
        """A tiny random STAMP model with a byte-level tokenizer, for tests (see `stamp.model.tiny`)."""
        from stamp.model.tiny import build_tiny_model

        return build_tiny_model(seed=seed, **kwargs)

    def save_stamp(self, path, *, overwrite: bool = False, state_dict: dict | None = None) -> None:
        """Save weights (safetensors), config with the STAMP settings, tokenizer and processor settings.
        `state_dict` replaces the model's own weights (e.g. the gathered full weights of an FSDP run)."""
        from stamp.model.loading import save_stamp_model

        save_stamp_model(self, path, overwrite=overwrite, state_dict=state_dict)

    # ----------------------------------------------------------------- building blocks
    @property
    def attn_implementation(self) -> str:
        return self.config._attn_implementation

    def check_attention_backend(self) -> None:
        if self.attn_implementation not in SUPPORTED_ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"attention implementation {self.attn_implementation!r} ignores STAMP's hybrid mask; "
                f"use one of {SUPPORTED_ATTN_IMPLEMENTATIONS}"
            )

    @property
    def merge_size(self) -> int:
        return int(self.config.vision_config.spatial_merge_size)

    def encode_images(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> list[torch.Tensor]:
        """Vision tower + patch merger: one (gh*gw, H) tensor of merged cell features per image, row-major."""
        out = self.model.get_image_features(pixel_values, image_grid_thw, return_dict=True)
        return list(out.pooler_output)

    def mask_embeddings(self, features: torch.Tensor) -> torch.Tensor:
        """E_mask = embed(`<|mask|>`) + F_p (visual mode) or embed(`<|mask|>`) alone (plain): (N, H)."""
        emb = self.get_input_embeddings().weight[self.stamp.mask_token_id]
        if self.stamp.mask_embedding == "plain":
            return emb.expand(features.shape[0], -1)
        return emb + features.to(emb.dtype)

    def embed_conversation(self, input_ids: torch.Tensor, image_features: list[torch.Tensor]) -> torch.Tensor:
        """Token embeddings with the image features scattered into the `<|image_pad|>` positions."""
        embeds = self.get_input_embeddings()(input_ids)
        if image_features:
            feats = torch.cat(image_features).to(embeds.dtype)
            slots = (input_ids == self.config.image_token_id).unsqueeze(-1)
            if int(slots.sum()) != feats.numel() // feats.shape[-1]:
                raise ValueError(
                    f"{int(slots.sum())} image tokens in the text but {feats.shape[0]} image features"
                )
            embeds = embeds.masked_scatter(slots, feats)
        return embeds

    def conversation_positions(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mm_token_type_ids: torch.Tensor | None,
        image_grid_thw: torch.Tensor | None,
    ) -> torch.Tensor:
        """(3, B, L) M-RoPE ids of the conversation, as Qwen2-VL computes them (padding gets 0)."""
        if image_grid_thw is not None and mm_token_type_ids is not None and bool(mm_token_type_ids.any()):
            pos, _ = self.model.get_rope_index(
                input_ids,
                mm_token_type_ids=mm_token_type_ids,
                image_grid_thw=image_grid_thw,
                attention_mask=attention_mask,
            )
            return pos
        pos = (attention_mask.long().cumsum(-1) - 1).clamp_min(0) * attention_mask.long()
        return pos.unsqueeze(0).expand(3, -1, -1).clone()

    def placeholder_blocks(
        self,
        input_ids: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        positions: torch.Tensor,
        image_features: list[torch.Tensor],
        image_grid_thw: torch.Tensor | None,
    ) -> list[list[PlaceholderBlock]]:
        """One `PlaceholderBlock` per `<|seg|>` of each sample; each segments the last image before it.
        None for the next-token baseline, whose masks are label tokens in the text."""
        if self.stamp.mask_decoder == "next_token":
            return [[] for _ in range(input_ids.shape[0])]
        blocks: list[list[PlaceholderBlock]] = []
        image_counter = 0
        for b in range(input_ids.shape[0]):
            is_img = mm_token_type_ids[b] == 1
            starts = (is_img & ~torch.cat([is_img.new_zeros(1), is_img[:-1]])).nonzero().flatten().tolist()
            seg_at = (input_ids[b] == self.stamp.seg_token_id).nonzero().flatten().tolist()
            row = []
            for i in seg_at:
                before = [k for k, s in enumerate(starts) if s < i]
                if not before:
                    raise ValueError(f"sample {b}: <|seg|> at position {i} has no image before it")
                img = image_counter + before[-1]
                _, h, w = (int(v) for v in image_grid_thw[img])
                grid = (h // self.merge_size, w // self.merge_size)
                row.append(
                    PlaceholderBlock(
                        seg_index=i,
                        image_index=img,
                        grid_hw=grid,
                        embeds=self.mask_embeddings(image_features[img]),
                        position_ids=placeholder_position_ids(
                            positions[:, b, i].max() + 1, grid, self.stamp.position_mode
                        ),
                    )
                )
            blocks.append(row)
            image_counter += len(starts)
        return blocks

    def run_language_model(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        allowed: torch.Tensor | None,
        cache=None,
    ):
        """The decoder stack with an explicit (B, 1, Q, K) bool mask. Returns (last hidden states, cache).

        `allowed=None` means every query sees every key (cache + new tokens): no mask reaches the
        attention backend, which then runs its unmasked kernel (on CPU, sdpa with a mask converts it
        and runs ~25% slower, and the mask itself costs Q*K work to build).
        """
        self.check_attention_backend()
        extra = {}
        if allowed is None:
            text_config = self.config.get_text_config()
            layer_types = set(getattr(text_config, "layer_types", None) or ["full_attention"])
            if layer_types == {"full_attention"}:
                mask = {"full_attention": None}  # a prepared mapping: transformers builds no causal mask
                extra["is_causal"] = False  # and sdpa must not fall back to its causal default
            else:  # sliding-window layers need their own masks: spell "everything visible" out
                past = cache.get_seq_length() if cache is not None else 0
                q = inputs_embeds.shape[1]
                allowed = torch.ones((1, 1, q, past + q), dtype=torch.bool, device=inputs_embeds.device)
                mask = to_backend_mask(allowed, self.attn_implementation)
        else:
            mask = to_backend_mask(allowed, self.attn_implementation)
        out = self.model.language_model(
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            attention_mask=mask,
            **{_cache_kwarg(type(self.model.language_model)): cache},
            use_cache=cache is not None,
            **extra,
        )
        return out.last_hidden_state, (out.cache if hasattr(out, "cache") else out.past_key_values)

    # ----------------------------------------------------------------- training forward
    def stamp_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mask_targets: torch.Tensor | None = None,
        mask_weights: torch.Tensor | None = None,
        text_weight: float = 1.0,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        pack: bool = True,
        **_: object,
    ) -> StampOutput:
        """One forward over [conversation ; all placeholder blocks] giving the text and mask losses.

        Args:
            input_ids / attention_mask / mm_token_type_ids: (B, L) conversation (any padding side).
            pixel_values / image_grid_thw: the processor's image tensors for all images of the batch.
            labels: (B, L) token ids, -100 where no text loss is taken.
            mask_targets / mask_weights: (M, N_max) per-cell targets in [0, 1] and loss weights (0 on
                padding and ignore), one row per `<|seg|>` in sample-major order.
            pack: several samples per row (exact; see `stamp.model.packing`) instead of one per row.
        """
        feats = self.encode_images(pixel_values, image_grid_thw) if pixel_values is not None else []
        conv = self.embed_conversation(input_ids, feats)  # (B, L, H)
        conv_pos = self.conversation_positions(input_ids, attention_mask, mm_token_type_ids, image_grid_thw)
        blocks = self.placeholder_blocks(input_ids, mm_token_type_ids, conv_pos, feats, image_grid_thw)

        seqs = self._sample_sequences(conv, conv_pos, attention_mask, blocks)
        lay = layout_rows(seqs, plan_rows([len(s) for s in seqs], pack))
        index = torch.arange(lay.key_block.shape[1], device=input_ids.device).expand_as(lay.key_block)
        allowed = build_hybrid_attention_mask(
            lay.key_block,
            lay.key_block,
            index,
            lay.limit,
            self.stamp.attention_mode,
            lay.segment,
            lay.segment,
        )
        hidden, _ = self.run_language_model(lay.embeds, lay.position_ids, allowed)

        out = StampOutput()
        total = hidden.new_zeros((), dtype=torch.float32)
        if labels is not None:
            out.text_loss = self._text_loss(hidden, lay, seqs, labels, attention_mask)
            total = total + text_weight * out.text_loss
        logits, grids = [], []
        for b, seq in enumerate(seqs):
            r, o = lay.placement[b]
            for (start, end), blk in zip(seq.block_spans, blocks[b]):
                logits.append(self.classifier(hidden[r, o + start : o + end]).squeeze(-1))
                grids.append(blk.grid_hw)
        if logits:
            out.mask_logits = pad_sequence(logits, batch_first=True)
            out.mask_grids = torch.tensor(grids, device=input_ids.device)
        if mask_targets is not None and logits:
            if mask_targets.shape[0] != len(logits):
                raise ValueError(
                    f"{len(logits)} <|seg|> tokens in the batch but {mask_targets.shape[0]} mask targets"
                )
            n_max = out.mask_logits.shape[1]
            weights = mask_weights if mask_weights is not None else torch.ones_like(mask_targets)
            out.bce_loss, out.dice_loss = mask_losses(
                out.mask_logits,
                mask_targets[:, :n_max].to(hidden.device),
                weights[:, :n_max].to(hidden.device),
            )
            total = total + bce_weight * out.bce_loss + dice_weight * out.dice_loss
        out.loss = total
        return out

    def _sample_sequences(self, conv, conv_pos, attention_mask, blocks) -> list[SampleSequence]:
        """Each sample's [conversation (padding dropped) ; its placeholder blocks], own coordinates."""
        seqs = []
        for b in range(conv.shape[0]):
            idx = attention_mask[b].nonzero().flatten()
            local = attention_mask[b].long().cumsum(0) - 1  # padded index -> index among real tokens
            n_conv = idx.numel()
            embeds, pos = [conv[b, idx]], [conv_pos[:, b, idx]]
            block = [torch.zeros(n_conv, dtype=torch.long, device=conv.device)]
            limit = [torch.arange(n_conv, device=conv.device)]
            spans, start = [], n_conv
            for j, blk in enumerate(blocks[b]):
                n = blk.embeds.shape[0]
                embeds.append(blk.embeds.to(conv.dtype))
                pos.append(blk.position_ids)
                block.append(torch.full((n,), j + 1, dtype=torch.long, device=conv.device))
                limit.append(
                    torch.full((n,), int(local[blk.seg_index]), dtype=torch.long, device=conv.device)
                )
                spans.append((start, start + n))
                start += n
            seqs.append(
                SampleSequence(
                    torch.cat(embeds),
                    torch.cat(pos, dim=1),
                    torch.cat(block),
                    torch.cat(limit),
                    n_conv,
                    spans,
                )
            )
        return seqs

    def _text_loss(self, hidden, lay: Layout, seqs, labels, attention_mask) -> torch.Tensor:
        """Next-token cross-entropy over the conversation tokens of every sample, wherever it sits."""
        rows, cols, targets = [], [], []
        for b, seq in enumerate(seqs):
            r, o = lay.placement[b]
            lab = labels[b, attention_mask[b].bool()]  # (n_conv,)
            rows.append(torch.full((seq.n_conv - 1,), r, dtype=torch.long))
            cols.append(torch.arange(o, o + seq.n_conv - 1))
            targets.append(lab[1:])
        return text_loss_at(hidden, torch.cat(rows), torch.cat(cols), torch.cat(targets), self.lm_head)


@functools.cache
def _cache_kwarg(language_model_class) -> str:
    """The KV-cache argument's name: transformers renamed `past_key_values` to `cache` within 5.x, and an
    unknown name would be swallowed by `**kwargs` (a silently ignored cache), so ask the signature."""
    params = inspect.signature(language_model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class StampQwen2VLModel(StampModel, Qwen2VLForConditionalGeneration):
    """STAMP on Qwen2-VL."""

    def __init__(self, config):
        Qwen2VLForConditionalGeneration.__init__(self, config)
        self._init_stamp(config)


class StampQwen2_5VLModel(StampModel, Qwen2_5_VLForConditionalGeneration):
    """STAMP on Qwen2.5-VL."""

    def __init__(self, config):
        Qwen2_5_VLForConditionalGeneration.__init__(self, config)
        self._init_stamp(config)


MODEL_CLASSES = {"qwen2_vl": StampQwen2VLModel, "qwen2_5_vl": StampQwen2_5VLModel}
