"""Special tokens: the Qwen2-VL chat/vision tokens and STAMP's `<|seg|>` / `<|mask|>`."""

from __future__ import annotations

SEG_TOKEN = "<|seg|>"  # STAMP's trigger: the model emits it where a mask belongs
MASK_TOKEN = "<|mask|>"  # the placeholder, one per image cell, in the mask pass
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
PAD = "<|endoftext|>"
QWEN_SPECIAL_TOKENS = (PAD, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)
STAMP_TOKENS = (SEG_TOKEN, MASK_TOKEN)

__all__ = ["SEG_TOKEN", "MASK_TOKEN", "add_stamp_tokens", "build_byte_tokenizer", "token_id"]


def token_id(tokenizer, token: str) -> int:
    """The id of a single special token; a clear error if the tokenizer lacks it."""
    ids = tokenizer.convert_tokens_to_ids([token])
    unk = getattr(tokenizer, "unk_token_id", None)
    if not ids or ids[0] is None or (unk is not None and ids[0] == unk):
        raise ValueError(f"the tokenizer has no token {token!r}")
    return int(ids[0])


def add_stamp_tokens(tokenizer) -> tuple[int, int]:
    """Add `<|seg|>` and `<|mask|>` as special tokens if missing (as the authors do); return their ids."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in STAMP_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": missing}, replace_extra_special_tokens=False
        )
    return token_id(tokenizer, SEG_TOKEN), token_id(tokenizer, MASK_TOKEN)


def build_byte_tokenizer():
    """A byte-level tokenizer (256 byte symbols + the special tokens), built in code: no files, no training.

    Used by the tiny random test model. Every string round-trips exactly.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(QWEN_SPECIAL_TOKENS) + list(STAMP_TOKENS))
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=IM_END, pad_token=PAD)
