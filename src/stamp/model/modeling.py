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
That is the reference forward of `stamp.model.reference` (the spec), computed for a whole batch at once
in packed rows (`stamp.model.batch_plan`); tests hold the two equal.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration
from transformers.utils import ModelOutput

from stamp.filemodes import plain_modes
from stamp.model.attention import (
    SUPPORTED_ATTN_IMPLEMENTATIONS,
    attention_backends,
    build_hybrid_attention_mask,
    to_backend_mask,
)
from stamp.model.batch_plan import BatchPlan, BatchPlanner
from stamp.model.losses import mask_losses, text_loss_at
from stamp.model.quiet import library_output
from stamp.model.settings import StampSettings


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


class StampModel:
    """STAMP methods shared by the concrete backbone classes (load with `StampModel.from_pretrained`)."""

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
        self.checkpoint = None  # where from_pretrained loaded it from (stamp.model.loading.Checkpoint)

    # ----------------------------------------------------------------- loading (see stamp.model.loading)
    @classmethod
    def from_pretrained(cls, path, *, verbose: bool | None = None, **kwargs):
        """Load a STAMP model from a local directory (see `stamp.model.loading.load_stamp_model`). Its
        processor is separate, as in transformers: `StampProcessor.for_model(model)` (or let
        `StampPredictor` build it). transformers' spellings work: `torch_dtype=` (an alias of `dtype`)
        and `device_map=` ("auto" splits a large model over the GPUs there are; needs accelerate).
        `verbose`: show transformers' loading bar (default: only with the `stamp` logger at INFO;
        `stamp.model.quiet`)."""
        from stamp.model.loading import load_stamp_model

        with library_output(verbose):
            return load_stamp_model(path, MODEL_CLASSES, **kwargs)

    @classmethod
    def from_pretrained_weights(cls, path, **kwargs):
        """transformers' own `from_pretrained` of the backbone class (used by `stamp.model.loading`)."""
        return super().from_pretrained(path, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' `save_pretrained` with the STAMP settings in the config. As in transformers, the
        processor saves itself beside it (`processor.save_pretrained(save_directory)`); `save_stamp` does
        both at once, atomically."""
        self.config.stamp = self.stamp.to_dict()
        with library_output():  # no bar, no DeepSpeed notice unless asked (stamp.model.quiet)
            super().save_pretrained(save_directory, *args, **kwargs)
        plain_modes(save_directory)  # safetensors writes 0o600 weights; the user's umask, as elsewhere

    def save_stamp(self, path, processor, *, overwrite: bool = False, state_dict: dict | None = None) -> None:
        """A complete model folder, written atomically: weights (safetensors), config with the STAMP
        settings, and `processor`'s tokenizer and settings. `state_dict` replaces the model's own
        weights (e.g. the gathered full weights of an FSDP run)."""
        from stamp.model.loading import save_stamp_model

        save_stamp_model(self, path, processor, overwrite=overwrite, state_dict=state_dict)

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
        with attention_backends(pixel_values.device):
            out = self.model.get_image_features(pixel_values, image_grid_thw, return_dict=True)
        return list(out.pooler_output)

    def mask_embeddings(self, features: torch.Tensor) -> torch.Tensor:
        """E_mask = embed(`<|mask|>`) + F_p (visual mode) or embed(`<|mask|>`) alone (plain): (N, H)."""
        emb = self.get_input_embeddings().weight[self.stamp.mask_token_id]
        if self.stamp.mask_embedding == "plain":
            return emb.expand(features.shape[0], -1)
        return emb + features.to(emb.dtype)

    def embed_conversation(
        self, input_ids: torch.Tensor, image_features: list[torch.Tensor], n_image_tokens: int | None = None
    ) -> torch.Tensor:
        """Token embeddings with the image features scattered into the `<|image_pad|>` positions.
        `n_image_tokens`: their number if already known (counting them on an accelerator syncs)."""
        embeds = self.get_input_embeddings()(input_ids)
        if image_features:
            feats = torch.cat(image_features).to(embeds.dtype)
            slots = (input_ids == self.config.image_token_id).unsqueeze(-1)
            count = int(slots.sum()) if n_image_tokens is None else n_image_tokens
            if count != feats.shape[0]:
                raise ValueError(f"{count} image tokens in the text but {feats.shape[0]} image features")
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

    def batch_planner(self, pack: bool = True, placeholders: bool = True) -> BatchPlanner:
        """This model's training-step planner (`stamp.model.batch_plan`), e.g. for data-loader workers.
        `placeholders=False` plans no placeholder slots after each `<|seg|>`: for training examples
        whose masks are not placeholder targets (the text alone is learned)."""
        return BatchPlanner(
            seg_token_id=self.stamp.seg_token_id,
            image_token_id=self.config.image_token_id,
            merge_size=self.merge_size,
            position_mode=self.stamp.position_mode,
            with_blocks=placeholders,
            pack=pack,
        )

    def plan_batch(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mm_token_type_ids: torch.Tensor | None,
        image_grid_thw: torch.Tensor | None,
        labels: torch.Tensor | None = None,
        pack: bool = True,
    ) -> BatchPlan:
        """The training step's index bookkeeping for this batch, computed on the CPU (see
        `stamp.model.batch_plan`). Inputs may live anywhere; they are copied to the CPU first."""
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "mm_token_type_ids": mm_token_type_ids,
            "image_grid_thw": image_grid_thw,
            "labels": labels,
        }
        return self.batch_planner(pack)({k: v.cpu() for k, v in batch.items() if v is not None})

    def run_language_model(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        allowed: torch.Tensor,
        cache=None,
    ):
        """The decoder stack with an explicit (B, 1, Q, K) bool mask over cache + new tokens (True: the
        query may attend to the key). Returns (last hidden states, cache)."""
        self.check_attention_backend()
        return self._decoder(
            inputs_embeds, position_ids, to_backend_mask(allowed, self.attn_implementation), cache
        )

    def run_causal_language_model(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, cache=None):
        """The decoder stack with plain causal attention over (B, L) unpadded rows: a prompt pass.
        Returns (last hidden states, cache).

        No mask is passed: transformers makes its own, and on sdpa with an empty cache makes none at all
        (sdpa's is_causal kernel), so memory stays linear in L.
        """
        self.check_attention_backend()
        return self._decoder(inputs_embeds, position_ids, None, cache)

    def _decoder(self, inputs_embeds, position_ids, mask, cache):
        with attention_backends(inputs_embeds.device):
            out = self.model.language_model(
                inputs_embeds=inputs_embeds,
                position_ids=position_ids,
                attention_mask=mask,
                **{_cache_kwarg(type(self.model.language_model)): cache},
                use_cache=cache is not None,
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
        plan: BatchPlan | None = None,
        image_features: list[torch.Tensor] | None = None,
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
            plan: this batch's `plan_batch(...)`, if the caller made it while the batch was on the CPU
                (otherwise it is made here, which copies the token ids back from the device: a sync,
                and plans placeholders for every `<|seg|>`: `batch_planner`).
            image_features: every image's merged cell features, in order (what `encode_images` returns
                for pixel_values), when already computed: the vision tower is not run again.
        """
        if plan is None:
            plan = self.plan_batch(input_ids, attention_mask, mm_token_type_ids, image_grid_thw, labels, pack)
        device = input_ids.device
        plan = plan.to(device)
        if image_features is not None:
            feats = list(image_features)
        else:
            feats = self.encode_images(pixel_values, image_grid_thw) if pixel_values is not None else []
        feats = [torch.cat(feats)] if feats else []  # every image's cells, in order: concatenated once
        conv = self.embed_conversation(input_ids, feats, n_image_tokens=plan.n_image_tokens)  # (B, L, H)
        hidden_size = conv.shape[-1]
        source = [conv.reshape(-1, hidden_size)]
        if plan.num_masks:
            source.append(self.mask_embeddings(feats[0][plan.cell_index]).to(conv.dtype))
        source.append(conv.new_zeros((1, hidden_size)))
        embeds = torch.cat(source)[plan.src_index]  # (R, T, H): the packed rows
        index = torch.arange(plan.key_block.shape[1], device=device).expand_as(plan.key_block)
        allowed = build_hybrid_attention_mask(
            plan.key_block,
            plan.key_block,
            index,
            plan.limit,
            self.stamp.attention_mode,
            plan.segment,
            plan.segment,
        )
        hidden, _ = self.run_language_model(embeds, plan.position_ids, allowed)

        out = StampOutput()
        total = hidden.new_zeros((), dtype=torch.float32)
        if labels is not None:
            out.text_loss = text_loss_at(
                hidden, plan.text_rows, plan.text_cols, plan.text_targets, self.lm_head
            )
            total = total + text_weight * out.text_loss
        if plan.num_masks:
            flat = self.classifier(hidden[plan.ph_rows, plan.ph_cols]).squeeze(-1)  # (C,)
            padded = flat.new_zeros(plan.num_masks * plan.n_max).index_copy(0, plan.ph_out, flat)
            out.mask_logits = padded.view(plan.num_masks, plan.n_max)
            out.mask_grids = plan.grids
        if mask_targets is not None and plan.num_masks:
            if mask_targets.shape[0] != plan.num_masks:
                raise ValueError(
                    f"{plan.num_masks} <|seg|> tokens in the batch but {mask_targets.shape[0]} mask targets"
                )
            n_max = plan.n_max
            weights = mask_weights if mask_weights is not None else torch.ones_like(mask_targets)
            out.bce_loss, out.dice_loss = mask_losses(
                out.mask_logits,
                mask_targets[:, :n_max].to(hidden.device),
                weights[:, :n_max].to(hidden.device),
            )
            total = total + bce_weight * out.bce_loss + dice_weight * out.dice_loss
        out.loss = total
        return out


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
