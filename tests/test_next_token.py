"""The Text4Seg-style next-token baseline of the experiments (experiments/next_token.py, built from STAMP's
public pieces): training examples, decoding, its model folders, and the core's refusal of its old
checkpoints."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_experiment, random_image, tiny_next_token_model

from stamp.data.sample import Turn
from stamp.model.loading import StampModelError
from stamp.model.modeling import StampModel
from stamp.model.settings import StampSettings

nt = load_experiment("next_token")


@pytest.fixture(scope="module")
def baseline():
    """(model, processor) of the baseline's tiny model."""
    return tiny_next_token_model(seed=3)


def _uncached_scores(model, proc, image, prompt: str, answer_ids, seg_at: int, n: int) -> torch.Tensor:
    """logit(fg) - logit(bg) at the `<|seg|>` and the first n - 1 labels, by ONE causal forward."""
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
    bg, fg = nt.model_labels(model, proc.tokenizer)
    rows = slice(start + seg_at, start + seg_at + n)
    return (logits[rows, fg] - logits[rows, bg]).float()


def test_labels_decoded_with_cache_equal_one_causal_forward(baseline):
    model, processor = baseline
    image = random_image(200, 260, 5)
    pred = nt.LabelPredictor(model, processor)
    pred.set_image(image)
    res = pred.chat("Segment the box.", answer_prefix="It is <|seg|>", max_new_tokens=3)
    assert len(res.masks) == 1
    got = res.masks[0].patch_logits
    gh, gw = got.shape
    bg, fg = nt.model_labels(model, processor.tokenizer)
    prefix = processor._text_ids("It is <|seg|>")
    seg_at = prefix.index(model.stamp.seg_token_id)
    labels = [fg if v > 0 else bg for v in got.flatten().tolist()]
    ref = _uncached_scores(model, processor, image, "Segment the box.", prefix + labels, seg_at, gh * gw)
    assert np.abs(got.flatten() - ref.numpy()).max() <= 1e-4
    # the labels are the mask, not answer text
    assert all(t not in (bg, fg) for t in res.token_ids[: len(prefix)])


def test_batched_rows_of_different_sizes_equal_single(baseline):
    items = [
        (random_image(120, 140, 1), "Segment the thing."),
        (random_image(300, 200, 2), "Longer prompt: it."),
    ]
    pred = nt.LabelPredictor(*baseline)
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
    assert nt.LabelSpelling([bg, fg])(example, StampSettings(seg, 3))["input_ids"] == out["input_ids"]


def test_a_saved_model_is_marked_as_the_scripts(baseline, tmp_path):
    """The script's model folder: STAMP's checkpoint (no trace of the baseline in its settings) plus its
    own file; the script refuses a plain STAMP model."""
    model, processor = baseline
    labels = nt.model_labels(model, processor.tokenizer)
    nt.save_model(model, processor, tmp_path / "m")
    marker = json.loads((tmp_path / "m" / nt.MARKER_FILE).read_text())
    assert marker["label_token_ids"] == list(labels)
    assert "next_token" not in (tmp_path / "m" / "config.json").read_text()
    again, again_processor = nt.load_model(tmp_path / "m")
    assert nt.model_labels(again, again_processor.tokenizer) == labels
    nt.LabelPredictor(again, again_processor)
    model.save_stamp(tmp_path / "plain", processor)
    with pytest.raises(ValueError, match="not a next-token model"):
        nt.load_model(tmp_path / "plain")
    with pytest.raises(ValueError, match="not a next-token model"):
        nt.LabelPredictor(StampModel.from_pretrained(tmp_path / "plain"))


def _old_style(model, processor, path: Path) -> None:
    """A checkpoint as the baseline wrote it when STAMP's settings named its decoder."""
    model.save_stamp(path, processor)
    config = json.loads((path / "config.json").read_text())
    labels = list(nt.model_labels(model, processor.tokenizer))
    config["stamp"].update(mask_decoder="next_token", label_token_ids=labels)
    (path / "config.json").write_text(json.dumps(config))


def test_an_old_checkpoint_is_a_one_line_error_naming_the_script(baseline, tmp_path, capsys):
    """A checkpoint whose config names the baseline's decoder: `stamp` refuses it in one line naming the
    script, and the script evaluates it."""
    from stamp.cli import main

    _old_style(*baseline, tmp_path / "m")
    with pytest.raises(StampModelError, match=r"decoded by 'next_token'.*python experiments/next_token\.py"):
        StampModel.from_pretrained(tmp_path / "m")
    common = ["--data", "synthref", "--limit", "1", "--model", str(tmp_path / "m"), "--no-progress"]
    common += ["--force-seg", "--max-new-tokens", "2", "--refine", "none"]
    capsys.readouterr()
    assert main(["eval", *common, "--out", str(tmp_path / "a.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "python experiments/next_token.py" in err
    assert not (tmp_path / "a.json").exists()
    assert nt.main(["eval", *common, "--out", str(tmp_path / "b.json")]) == 0
    results = json.loads((tmp_path / "b.json").read_text())
    assert results["n_samples"] == 1 and results["samples"][0]["has_mask"]
    loaded, loaded_processor = nt.load_model(tmp_path / "m")
    model, processor = baseline
    assert nt.model_labels(loaded, loaded_processor.tokenizer) == nt.model_labels(model, processor.tokenizer)


def test_the_script_trains_and_evaluates_through_stamps_pieces(tmp_path, capsys):
    """`train` runs STAMP's trainer with the baseline's arguments (label text, no placeholders, the
    marker in each checkpoint's model); `eval` runs STAMP's evaluation with its predictor."""
    from tests_train_overrides import TINY_MODEL

    config = str(Path(__file__).resolve().parents[1] / "configs" / "tiny-synth.yaml")
    run = [*TINY_MODEL, "run.steps=2", "run.eval_every=0", f"run.out_dir={tmp_path / 'r'}"]
    assert nt.main(["train", config, *run, "--no-progress"]) == 0
    model = tmp_path / "r" / "checkpoints" / "step_0000002" / "model"
    assert (model / nt.MARKER_FILE).is_file()
    common = ["--data", "synthref", "--limit", "1", "--model", str(model), "--no-progress"]
    assert nt.main(["eval", *common, "--force-seg", "--out", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["n_samples"] == 1
    capsys.readouterr()
    assert nt.main(["train", config, "run.eval_every=1", f"run.out_dir={tmp_path / 'v'}"]) == 2
    assert "run.eval_every" in capsys.readouterr().err


def test_the_script_has_its_own_commands(capsys):
    with pytest.raises(SystemExit):
        nt.main([])
    assert "usage: python experiments/next_token.py" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        nt.main(["--help"])
    assert "next-token baseline" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        nt.main(["eval", "--help"])  # stamp eval's arguments
    assert "--data" in capsys.readouterr().out


def test_the_package_names_no_baseline():
    """The baseline lives in experiments/: no module of the package names it."""
    src = Path(__file__).resolve().parents[1] / "src" / "stamp"
    found = subprocess.run(["grep", "-rln", "next_token", str(src)], capture_output=True, text=True).stdout
    assert found == "", found
