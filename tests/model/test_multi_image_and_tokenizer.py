import torch
from helpers import random_image

from stamp.model.tokens import MASK_TOKEN, QWEN_SPECIAL_TOKENS, SEG_TOKEN
from stamp.train.tokenizer import SHIPPED_TOKENIZER, load_synth_tokenizer


def test_seg_uses_the_last_image_before_it(tiny_model, tiny_processor):
    """Two images in one conversation: a <|seg|> after the second image segments the second one."""
    proc = tiny_processor
    a, b = proc.encode_image(random_image(224, 224, 1)), proc.encode_image(random_image(280, 224, 2))
    img = proc.image_token_id

    def block(enc):
        return [proc.vision_start_id] + [img] * enc.num_cells + [proc.vision_end_id]

    text = proc._text_ids("compare ")
    ids = text + block(a) + text + block(b) + proc._text_ids("it is ") + [proc.seg_token_id]
    batch = {
        "input_ids": torch.tensor([ids]),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        "mm_token_type_ids": (torch.tensor([ids]) == img).long(),
        "pixel_values": torch.cat([a.pixel_values, b.pixel_values]),
        "image_grid_thw": torch.stack([a.grid_thw, b.grid_thw]),
    }
    with torch.no_grad():
        out = tiny_model.stamp_forward(**batch)
        plan = tiny_model.plan_batch(
            batch["input_ids"], batch["attention_mask"], batch["mm_token_type_ids"], batch["image_grid_thw"]
        )
    assert len(plan.blocks) == 1 and plan.blocks[0].image_index == 1 and plan.blocks[0].grid_hw == b.grid_hw
    # its placeholders take the second image's cells (the first image's cells come first)
    assert plan.cell_index.tolist() == list(range(a.num_cells, a.num_cells + b.num_cells))
    assert tuple(out.mask_grids[0].tolist()) == b.grid_hw and out.mask_grids[0].tolist() != list(a.grid_hw)


def test_shipped_tokenizer_has_fixed_specials():
    tok = load_synth_tokenizer(SHIPPED_TOKENIZER)
    specials = list(QWEN_SPECIAL_TOKENS) + [SEG_TOKEN, MASK_TOKEN]
    assert [tok.convert_tokens_to_ids(t) for t in specials] == list(range(len(specials)))
    ids = tok("The red circle <|seg|> and the blue star <|seg|>.", add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids(SEG_TOKEN)) == 2
    assert tok.decode(ids) == "The red circle <|seg|> and the blue star <|seg|>."
    assert len(tok("Please segment the small purple diamond.")["input_ids"]) <= 10  # words, not bytes
