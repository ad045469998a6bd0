"""`stamp calibrate` and the model's own mask threshold (`StampSettings.mask_threshold`)."""

import json

import numpy as np
import pytest
from helpers import save_tiny_model

from stamp.cli import main
from stamp.data.synthref import SynthRef
from stamp.eval.calibrate import ReplayPredictor, choose, rule_score
from stamp.eval.evaluate import evaluate_samples
from stamp.eval.runner import DEFAULT_FORCE_PREFIX
from stamp.inference import StampPredictor
from stamp.model.settings import StampSettings
from stamp.processing import StampProcessor


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):

    path = tmp_path_factory.mktemp("m") / "tiny"
    save_tiny_model(path)
    return path


def _run(predictor, n=5):
    ds = SynthRef("val", seed=3, image_size_range=(64, 96))
    report = evaluate_samples(
        predictor, (ds[i] for i in range(n)), total=n, answer_prefix=DEFAULT_FORCE_PREFIX, max_new_tokens=6
    )
    return report.metrics, [{k: v for k, v in r.items() if k != "seconds"} for r in report.samples]


@pytest.mark.parametrize("refine", ["none", "guided"])
def test_replay_matches_a_fresh_run_at_each_threshold(tiny_model, tiny_processor, refine):
    replay = ReplayPredictor(tiny_model, tiny_processor, refine=refine)
    replay.set_threshold(0.5)
    first = _run(replay)
    assert first == _run(StampPredictor(tiny_model, tiny_processor, threshold=0.5, refine=refine))
    calls = replay.vision_calls
    # the random model's probabilities sit near 0.5: cutting lower must change some masks
    for t in (0.45, 0.55):
        replay.set_threshold(t)
        replay.rewind()
        replayed = _run(replay)
        assert replayed == _run(StampPredictor(tiny_model, tiny_processor, threshold=t, refine=refine))
        if refine == "guided":
            assert replay.refiner.threshold == t
    assert replay.vision_calls == calls  # replays never ran the vision tower
    unions = [r["union"] for r in first[1] if "union" in r]
    assert unions != [r["union"] for r in replayed[1] if "union" in r]


def test_replay_refuses_a_different_sequence(tiny_model, tiny_processor):
    replay = ReplayPredictor(tiny_model, tiny_processor)
    _run(replay, n=2)
    replay.rewind()
    replay.set_image(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(RuntimeError, match="not the next one recorded"):
        replay.chat("something else entirely")


def test_choice_rule():
    assert rule_score({"ciou": 40.0, "giou": 20.0, "n_acc": None}) == 30.0
    rs = [{"threshold": t, "score": s} for t, s in ((0.3, 50.0), (0.4, 51.0), (0.5, 51.0), (0.6, 40.0))]
    assert choose(rs) == 0.5  # a tie goes to the usual cut
    assert choose(rs[:2]) == 0.4


def test_mask_threshold_setting_is_validated_and_used(tiny_model, tiny_processor, model_dir):
    base = {"seg_token_id": 1, "mask_token_id": 2}
    assert StampSettings.from_dict(base).mask_threshold == 0.5  # configs without the key still load
    for bad in (0.0, 1.0, -0.2, "0.4", True):
        with pytest.raises(ValueError, match="mask_threshold"):
            StampSettings.from_dict({**base, "mask_threshold": bad})
    old = tiny_model.stamp.mask_threshold
    try:
        tiny_model.stamp.mask_threshold = 0.35
        assert StampPredictor(tiny_model, tiny_processor).threshold == 0.35
        assert StampPredictor(tiny_model, tiny_processor, threshold=0.6).threshold == 0.6  # the caller's wins
        assert StampPredictor(tiny_model, tiny_processor, refine="guided").refiner.threshold == 0.35
    finally:
        tiny_model.stamp.mask_threshold = old
    with pytest.raises(ValueError, match="threshold"):
        StampPredictor(tiny_model, tiny_processor, threshold=1.5)


def test_calibrate_cli_writes_the_choice(model_dir, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    out = tmp_path / "sweep.json"
    argv = ["calibrate", "--data", "synthref", "--limit", "4", "--thresholds", "0.3,0.5,0.7"]
    argv += [
        "--model",
        str(model),
        "--out",
        str(out),
        "--no-progress",
        "--synth-size",
        "64,96",
        "--max-new-tokens",
        "6",
    ]
    assert main([*argv, "--write"]) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert [r["threshold"] for r in res["results"]] == [0.3, 0.5, 0.7]
    assert res["best"] in (0.3, 0.5, 0.7) and res["seed"] == 1 and res["refine"] == "none"
    assert res["best"] == choose(res["results"]) and f"best threshold: {res['best']}" in printed
    config = json.loads((model / "config.json").read_text())
    assert config["stamp"]["mask_threshold"] == res["best"]
    from stamp.model.modeling import StampModel

    assert StampPredictor(StampModel.from_pretrained(str(model))).threshold == res["best"]
    # the sweep file is not overwritten without --force; bad thresholds are a one-line usage error
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--thresholds", "0.3,1.5"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "thresholds must lie in (0, 1)" in err and "Traceback" not in err


def test_calibrate_write_refuses_a_directory_without_stamp_settings(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    argv = [
        "calibrate",
        "--data",
        "synthref",
        "--limit",
        "1",
        "--model",
        str(tmp_path),
        "--write",
        "--no-progress",
    ]
    assert main(argv) == 2
    assert "holds no STAMP settings" in capsys.readouterr().err


def test_cell_range_deploys_another_resolution(model_dir, tmp_path, capsys):
    from helpers import random_image

    proc = StampProcessor.from_pretrained(str(model_dir))
    for lo, hi in ((4, 9), (16, 25)):
        proc.set_cell_range(lo, hi)
        for h, w in ((56, 56), (500, 400), (300, 900)):
            assert lo <= proc.encode_image(random_image(h, w, 0)).num_cells <= hi, (lo, hi, h, w)
    with pytest.raises(ValueError, match="min cells"):
        proc.set_cell_range(9, 4)
    # calibrate and eval take --cells and record it; a bad range is a one-line usage error
    common = ["--data", "synthref", "--limit", "2", "--model", str(model_dir), "--no-progress"]
    common += ["--synth-size", "64,96", "--max-new-tokens", "4", "--cells", "4,9"]
    assert main(["calibrate", *common, "--thresholds", "0.5", "--out", str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["cells"] == [4, 9]
    assert main(["eval", *common, "--out", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["cells"] == [4, 9]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", *common[:-1], "9,4"])
    assert exc.value.code == 2 and "need 0 < MIN <= MAX" in capsys.readouterr().err
