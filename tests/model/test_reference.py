"""The reference forward (`stamp.model.reference`) is the spec: the packed training forward equals it for
every sample of a batch (several `<|seg|>` per sample, samples without one, different image sizes), in
every attention mode, position mode and attention implementation. (The cached generation is held equal
to it by tests/inference/test_mask_pass_equivalence.py and test_two_phase.py.)"""

import pytest
import torch
import torch.nn.functional as F
from test_packing import samples

from stamp.model.reference import reference_forward
from stamp.tiny import build_tiny_model


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize(
    ("attention_mode", "position_mode"), [("hybrid", "grid"), ("causal", "grid"), ("hybrid", "text")]
)
@pytest.mark.parametrize("pack", [True, False])
def test_training_forward_equals_the_reference(attn, attention_mode, position_mode, pack):
    model, processor = build_tiny_model(
        seed=3, attn_implementation=attn, attention_mode=attention_mode, position_mode=position_mode
    )
    proc = processor
    examples = [proc.encode_sample(s) for s in samples()]
    batch = proc.collate(examples)
    with torch.no_grad():
        out = model.stamp_forward(**batch, pack=pack)
    k, text_losses = 0, []
    for example in examples:
        enc = example["image"]
        ref = reference_forward(model, torch.tensor(example["input_ids"]), enc.pixel_values, enc.grid_thw)
        for want in ref.mask_logits:
            gh, gw = (int(v) for v in out.mask_grids[k])
            torch.testing.assert_close(out.mask_logits[k, : gh * gw].view(gh, gw), want, atol=1e-5, rtol=1e-5)
            k += 1
        labels = torch.tensor(example["labels"])
        text_losses.append(
            F.cross_entropy(ref.text_logits[:-1], labels[1:], ignore_index=-100, reduction="sum")
        )
        text_losses.append((labels[1:] != -100).sum())
    assert k == out.mask_logits.shape[0] == 3
    total, count = sum(text_losses[::2]), sum(text_losses[1::2])
    torch.testing.assert_close(out.text_loss, total / count, atol=1e-5, rtol=1e-5)


def test_the_reference_text_is_blind_to_the_placeholders():
    """The conversation never sees a placeholder: its logits equal a plain causal forward's."""
    model, processor = build_tiny_model(seed=4)
    proc = processor
    example = proc.encode_sample(samples()[2])
    enc = example["image"]
    ids = torch.tensor(example["input_ids"])
    ref = reference_forward(model, ids, enc.pixel_values, enc.grid_thw)
    with torch.no_grad():
        plain = model(
            input_ids=ids[None],
            pixel_values=enc.pixel_values,
            image_grid_thw=enc.grid_thw[None],
            mm_token_type_ids=(ids[None] == model.config.image_token_id).long(),
        ).logits[0]
    torch.testing.assert_close(ref.text_logits, plain.float(), atol=1e-5, rtol=1e-5)
    assert len(ref.mask_logits) == 2 and all(m.shape == enc.grid_hw for m in ref.mask_logits)
