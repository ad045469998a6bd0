"""The Text4Seg-style next-token baseline of the experiments (experiments/next_token.py, a registered mask
decoder): training examples, decoding, and the core's refusal of it when it is not registered."""

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_experiment, random_image, tiny_next_token_model

from stamp.data.sample import Turn
from stamp.inference import StampPredictor, generation
from stamp.model.loading import StampModelError
from stamp.model.settings import StampSettings
from stamp.processing import load_pretrained

nt = load_experiment("next_token")  # registers the decoder


@pytest.fixture(scope="module")
def baseline():
    return tiny_next_token_model(seed=3)


def _uncached_scores(model, image, prompt: str, answer_ids: list[int], seg_at: int, n: int) -> torch.Tensor:
    """logit(fg) - logit(bg) at the `<|seg|>` and the first n - 1 labels, by ONE causal forward."""
    proc = model.processor
    enc = proc.encode_image(image)
    ids, _ = proc.encode_turns([Turn("user", prompt)], enc, add_generation_prompt=True)
    start = len(ids)
    ids = torch.tensor([ids + answer_ids])
    attn = torch.ones_like(ids)
    mm = (ids == model.config.image_token_id).long()
    with torch.no_grad():
        feats = model.encode_images(enc.pixel_values, enc.grid_thw[None])
        embeds = model.embed_conversation(ids, feats)
        pos = model.conversation_positions(ids, attn, mm, enc.grid_thw[None])
        length = ids.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool).tril()[None, None]
        hidden, _ = model.run_language_model(embeds, pos, causal)
        logits = model.lm_head(hidden[0])
    bg, fg = model.stamp.label_token_ids
    rows = slice(start + seg_at, start + seg_at + n)
    return (logits[rows, fg] - logits[rows, bg]).float()


def test_labels_decoded_with_cache_equal_one_causal_forward(baseline):
    image = random_image(200, 260, 5)
    pred = StampPredictor(baseline)
    pred.set_image(image)
    res = pred.chat("Segment the box.", answer_prefix="It is <|seg|>", max_new_tokens=3)
    assert len(res.masks) == 1
    got = res.masks[0].patch_logits
    gh, gw = got.shape
    bg, fg = baseline.stamp.label_token_ids
    prefix = baseline.processor._text_ids("It is <|seg|>")
    seg_at = prefix.index(baseline.stamp.seg_token_id)
    labels = [fg if v > 0 else bg for v in got.flatten().tolist()]
    ref = _uncached_scores(baseline, image, "Segment the box.", prefix + labels, seg_at, gh * gw)
    assert np.abs(got.flatten() - ref.numpy()).max() <= 1e-4
    # the labels are the mask, not answer text
    assert all(t not in (bg, fg) for t in res.token_ids[: len(prefix)])


def test_batched_rows_of_different_sizes_equal_single(baseline):
    items = [
        (random_image(120, 140, 1), "Segment the thing."),
        (random_image(300, 200, 2), "Longer prompt: it."),
    ]
    pred = StampPredictor(baseline)
    batch = pred.predict_batch(items, answer_prefix="<|seg|>", max_new_tokens=3)
    sizes = {r.masks[0].patch_logits.size for r in batch}
    assert len(sizes) == 2  # different N per row: one row pads while the other decodes labels
    for (image, prompt), res in zip(items, batch):
        pred.set_image(image)
        single = pred.chat(prompt, answer_prefix="<|seg|>", max_new_tokens=3)
        assert single.text == res.text
        assert np.abs(single.masks[0].patch_logits - res.masks[0].patch_logits).max() <= 1e-4


def test_label_sequence_example():
    seg, bg, fg = 7, 1, 2
    example = {
        "input_ids": [5, 6, seg, 9],
        "labels": [-100, 6, seg, 9],
        "targets": [torch.tensor([[0.9, 0.1], [0.5, 0.0]])],
        "weights": [torch.tensor([[1.0, 1.0], [1.0, 0.0]])],
        "image": None,
    }
    out = nt.as_label_sequence(example, seg, [bg, fg])
    assert out["input_ids"] == [5, 6, seg, fg, bg, fg, bg, 9]
    assert out["labels"] == [-100, 6, seg, fg, bg, fg, -100, 9]  # ignored cell: no loss
    assert out["targets"] == [] and out["weights"] == []
    hist = dict(example, labels=[-100, -100, -100, 9])  # a <|seg|> without loss: labels without loss
    assert nt.as_label_sequence(hist, seg, [bg, fg])["labels"][3:7] == [-100] * 4
    settings = StampSettings(seg, 3, mask_decoder=nt.NAME, label_token_ids=[bg, fg])
    assert nt.training_example(example, settings)["input_ids"] == out["input_ids"]


def test_settings_need_two_label_ids():
    with pytest.raises(ValueError, match="label_token_ids"):
        nt.model_labels(StampSettings(1, 2, mask_decoder=nt.NAME))
    with pytest.raises(ValueError, match="label_token_ids"):
        StampSettings(1, 2, mask_decoder=nt.NAME, label_token_ids=[3, 3])
    with pytest.raises(ValueError, match="mask_decoder"):
        StampSettings(1, 2, mask_decoder="not a name")
    settings = StampSettings(1, 2, mask_decoder=nt.NAME, label_token_ids=[3, 4])
    assert settings.label_token_ids == [3, 4] and nt.model_labels(settings) == (3, 4)


def test_save_load_keeps_the_decoder(baseline, tmp_path):
    baseline.save_stamp(tmp_path / "m")
    again = load_pretrained(tmp_path / "m")
    assert again.stamp.mask_decoder == "next_token"
    assert again.stamp.label_token_ids == baseline.stamp.label_token_ids


def test_an_unregistered_decoder_is_a_one_line_error_naming_its_script(
    baseline, tmp_path, monkeypatch, capsys
):
    """A process that never imported experiments/next_token.py loads such a model but refuses to decode
    or train it, naming the script; the script's entry point runs the same `stamp` command."""
    from stamp.cli import main
    from stamp.train.config import TrainConfig
    from stamp.train.trainer import Trainer
    from stamp.yaml_config import load_config

    baseline.save_stamp(tmp_path / "m")
    monkeypatch.setattr(
        generation, "_MASK_DECODERS", {"placeholders": generation._MASK_DECODERS["placeholders"]}
    )
    pred = StampPredictor(load_pretrained(tmp_path / "m"))
    pred.set_image(random_image(100, 120, 1))
    with pytest.raises(
        StampModelError, match=r"'next_token' is not registered: .*experiments/next_token\.py"
    ):
        pred.chat("Segment it.", answer_prefix="<|seg|>", max_new_tokens=1)
    common = ["--data", "synthref", "--limit", "1", "--model", str(tmp_path / "m"), "--no-progress"]
    common += ["--force-seg", "--max-new-tokens", "2"]
    capsys.readouterr()
    assert main(["eval", *common, "--out", str(tmp_path / "a.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "python experiments/next_token.py" in err
    config = Path(__file__).resolve().parents[1] / "configs" / "tiny-synth.yaml"
    with pytest.raises(StampModelError, match="experiments/next_token.py"):
        Trainer(
            load_config(
                TrainConfig, config, ["model.mask_decoder=next_token", f"run.out_dir={tmp_path / 'r'}"]
            )
        )
    assert not (tmp_path / "r").exists()
    monkeypatch.undo()
    assert nt.main(["eval", *common, "--out", str(tmp_path / "b.json")]) == 0
    assert (tmp_path / "b.json").is_file()


def test_the_script_passes_commands_to_stamp(capsys):
    assert nt.main([]) == 2 and "usage: python experiments/next_token.py COMMAND" in capsys.readouterr().err
    assert nt.main(["--help"]) == 0 and "next-token baseline" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        nt.main(["eval", "--help"])  # stamp eval's own help
    assert "--data" in capsys.readouterr().out


def test_the_package_names_no_baseline():
    """The baseline lives in experiments/: no module of the package names it."""
    src = Path(__file__).resolve().parents[1] / "src" / "stamp"
    found = subprocess.run(["grep", "-rln", "next_token", str(src)], capture_output=True, text=True).stdout
    assert found == "", found
