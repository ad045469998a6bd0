"""A small BPE tokenizer for models trained from scratch on SynthRef text.

Byte-level BPE, so any text still encodes (unknown words fall back to bytes); the special tokens get
fixed ids 0..k-1 before training, so the trainer cannot re-assign them (a word-level trainer that
sees `<|seg|>` in the corpus would otherwise turn it into an ordinary word).

Rebuild the shipped one with:
    stamp data tokenizer --out src/stamp/assets/tokenizer-synth --force
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from stamp.model.tokens import IM_END, PAD, QWEN_SPECIAL_TOKENS, STAMP_TOKENS

SHIPPED_TOKENIZER = Path(__file__).resolve().parent.parent / "assets" / "tokenizer-synth"


def synthref_texts(n_samples: int = 20000, seed: int = 0) -> Iterator[str]:
    """User and assistant texts of the first `n_samples` SynthRef train samples (with `<|seg|>` removed)."""
    from stamp.data.synthref import SynthRef

    ds = SynthRef("train", seed=seed)
    for i in range(n_samples):
        for turn in ds.generate(i).turns:
            yield turn.text.replace("<|seg|>", " ")


def train_synth_tokenizer(texts, vocab_size: int = 1024):
    """Train byte-level BPE on `texts`; returns a transformers fast tokenizer with STAMP's specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(QWEN_SPECIAL_TOKENS) + list(STAMP_TOKENS)
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    for i, tok in enumerate(specials):
        if core.token_to_id(tok) != i:
            raise RuntimeError(f"special token {tok} got id {core.token_to_id(tok)}, expected {i}")
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=IM_END, pad_token=PAD)


def load_synth_tokenizer(path: str | Path = SHIPPED_TOKENIZER):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
