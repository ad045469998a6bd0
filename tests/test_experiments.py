"""The ablation runner end to end on a tiny budget: trains, resumes/skips, evaluates, reports."""

import importlib.util
from pathlib import Path

import pytest
import torch
from helpers import random_image, save_tiny_model, tiny_next_token_model
from tests_train_overrides import TINY_MODEL

from stamp.inference import StampPredictor

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "ablations.py"


def _load(script: str = "ablations"):
    """An experiments/ script as a module (they are scripts, not part of the package)."""
    spec = importlib.util.spec_from_file_location(script, SCRIPT.parent / f"{script}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ablation_runner_smoke(tmp_path, monkeypatch):
    mod = _load()
    # shrink every run to the tiny test model and skip the long evaluations
    monkeypatch.setattr(mod, "RUNS", {k: (v[0] + TINY_MODEL, v[1]) for k, v in list(mod.RUNS.items())[:2]})
    monkeypatch.setattr(mod, "FULL_EXTRA", mod.FULL_EXTRA[:2])
    assert mod.main(["--out", str(tmp_path), "--steps", "2", "--eval-limit", "2"]) == 0
    assert (tmp_path / "full.json").is_file() and (tmp_path / "no_hybrid.json").is_file()
    before = (tmp_path / "full.json").stat().st_mtime
    assert mod.main(["--out", str(tmp_path), "--steps", "2", "--eval-limit", "2", "--only", "full"]) == 0
    assert (tmp_path / "full.json").stat().st_mtime == before  # finished runs are skipped
    table = mod.report(tmp_path)
    assert "| full |" in table and "| no_hybrid |" in table and "val_guided" in table


def test_every_run_is_a_valid_config_of_the_same_budget():
    from stamp.train.config import TrainConfig
    from stamp.yaml_config import load_config

    mod = _load()
    base = load_config(TrainConfig, mod.BASE)
    assert "next_token" in mod.RUNS and "no_hybrid" in mod.RUNS and "plain_mask" in mod.RUNS
    for name, (overrides, _) in mod.RUNS.items():
        cfg = load_config(TrainConfig, mod.BASE, overrides)
        assert cfg.run.steps == base.run.steps and cfg.optim == base.optim, name  # same budget
        assert (
            cfg.model.hidden_size == base.model.hidden_size
            and cfg.model.vision_depth == base.model.vision_depth
        )
    extras, predictor_type = mod.SCRIPT_RUNS["next_token"]  # trained and evaluated through its script
    assert extras(load_config(TrainConfig, mod.BASE, mod.RUNS["next_token"][0]))["placeholders"] is False
    assert predictor_type.__name__ == "LabelPredictor"
    assert mod.base_task_mix() == base.data.task_weights


def test_failure_modes_counts_every_sample(tmp_path, capsys):
    import json

    import numpy as np

    mod = _load("failure_modes")
    gt = np.zeros((4, 4), dtype=bool)
    gt[:2, :2] = True
    assert mod.cell_fraction(gt, (2, 2), (0, 0)) == 1.0 and mod.cell_fraction(gt, (2, 2), (1, 1)) == 0.0
    save_tiny_model(tmp_path / "m")
    assert mod.main(["--model", str(tmp_path / "m"), "--n", "3", "--size", "96,112"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["no_seg"] + report["empty"] + report["hit"] + report["miss"] == 3


def test_bootstrap_intervals_on_hand_made_results(tmp_path):
    import json

    mod = _load()

    def write(name, pairs):
        samples = [
            {"id": f"s{i}", "mask_index": 0, "intersection": a, "union": u} for i, (a, u) in enumerate(pairs)
        ]
        samples.append({"id": "vqa", "task": "vqa"})  # records without masks are ignored
        f = tmp_path / f"{name}.json"
        f.write_text(json.dumps({"samples": samples}))
        return f

    a = write("a", [(5, 10)] * 20)  # cIoU 50 on every resampling
    b = write("b", [(8, 10)] * 20)  # cIoU 80
    assert mod.bootstrap_ciou(a) == (50.0, 50.0)
    d, lo, hi = mod.paired_difference(a, b)
    assert (round(d, 6), round(lo, 6), round(hi, 6)) == (30.0, 30.0, 30.0)
    mixed = write("c", [(0, 10), (10, 10)] * 10)  # cIoU 50 overall, but noisy under resampling
    lo, hi = mod.bootstrap_ciou(mixed)
    assert lo < 50.0 < hi


def test_paired_vqa_difference(tmp_path):
    import json

    mod = _load()
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"samples": [{"id": f"q{i}", "correct": i < 2} for i in range(10)]}))
    b.write_text(json.dumps({"samples": [{"id": f"q{i}", "correct": i < 7} for i in range(10)]}))
    d, lo, hi = mod.paired_vqa_difference(a, b)
    assert round(d, 6) == 50.0 and lo <= 50.0 <= hi


def test_next_token_probe_runs_on_a_baseline_model(tmp_path, capsys):
    import json

    mod = _load("next_token_probe")
    save_tiny_model(tmp_path / "stamp")
    assert mod.main(["--model", str(tmp_path / "stamp"), "--n", "1"]) == 2  # not a next-token model
    _load("next_token").save_model(*tiny_next_token_model(seed=0), tmp_path / "nt")
    assert mod.main(["--model", str(tmp_path / "nt"), "--n", "2"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["fg_cells"] + report["bg_cells"] > 0


def test_object_probe_helpers_on_hand_made_cases():
    import numpy as np

    mod = _load("probe_objects")
    imap = np.zeros((56, 84), dtype=np.uint8)  # 2 x 3 cells of 28 px
    imap[:28, 28:56] = 1  # object 0 fills cell (0, 1)
    imap[30:34, 60:64] = 2  # object 1 covers a sliver of cell (1, 2) only
    assert mod.object_cells(imap, 0, (2, 3)) == [1]
    assert mod.object_cells(imap, 1, (2, 3)) == [5]  # no cell >= 0.5: its most-covered cell
    assert mod.crop_cells([0, 0, 84, 56], (84, 56), (2, 3)) == [
        0,
        1,
        2,
        3,
        4,
        5,
        3,
        4,
        5,
    ]  # rows at y 9, 28, 47
    y = np.array(["a"] * 6 + ["b"] * 2 + ["a"] * 2)
    assert mod.majority_rate(y, 8) == 100.0
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    separable = np.eye(3)[labels] * 3 + rng.normal(0, 0.3, (300, 3))
    assert mod.fit_probe(separable, labels.astype(str), 200) > 95.0
    noise = rng.normal(0, 1, (300, 3))
    assert mod.fit_probe(noise, labels.astype(str), 200) < 60.0  # chance is ~33%


def test_object_probe_and_shape_signal_run_on_a_tiny_model(tmp_path, capsys):
    import json

    save_tiny_model(tmp_path / "m")
    probe = _load("probe_objects")
    assert (
        probe.main(["--model", str(tmp_path / "m"), "--scenes", "10", "--out", str(tmp_path / "p.json")]) == 0
    )
    report = json.loads((tmp_path / "p.json").read_text())
    for target in ("kind", "colour", "position"):
        entry = report["probes"][target]
        assert 0 < entry["train_objects"] < entry["objects"]
        assert all(0.0 <= entry[k] <= 100.0 for k in ("majority", "vision", "language", "vision_3x3"))
    signal = _load("shape_signal")
    out = tmp_path / "s"
    assert (
        signal.main(["--model", str(tmp_path / "m"), "--minutes", "0.01", "--batch", "2", "--out", str(out)])
        == 0
    )
    assert (out / "model" / "model.safetensors").is_file()
    assert (
        signal.main(["--model", str(tmp_path / "m"), "--minutes", "0.01", "--out", str(out)]) == 2
    )  # refuses
    capsys.readouterr()
    anchored = ["--model", str(tmp_path / "m"), "--steps", "3", "--batch", "2", "--anchor", "1"]
    assert signal.main([*anchored, "--out", str(tmp_path / "a")]) == 0
    assert "for 3 steps (6 images)" in capsys.readouterr().out  # --steps, not the clock, decides
    assert (tmp_path / "a" / "model" / "model.safetensors").is_file()


TINY_RUN = TINY_MODEL + ["data.val_samples=3", "run.eval_every=0", "run.log_every=1"]


def test_cell_kind_labels_mark_the_cells_an_object_covers():
    import numpy as np

    from stamp.data.synthref.scenes import KINDS

    mod = _load("shape_aux")
    imap = np.zeros((56, 84), dtype=np.uint8)  # 2 x 3 cells of 28 px
    imap[:28, :28] = 1  # object 0 fills cell (0, 0)
    imap[28:, 28:48] = 2  # object 1 covers 20/28 of cell (1, 1)
    imap[30:33, 60:63] = 2  # and a sliver of cell (1, 2)
    scene = {"objects": [{"index": 0, "kind": KINDS[3]}, {"index": 1, "kind": KINDS[5]}]}
    labels = mod.cell_kind_labels({"instance_map": imap, "scene": scene}, (2, 3))
    assert labels.tolist() == [3, -100, -100, -100, 5, -100]
    assert mod.cell_kind_labels({}, (2, 3)).tolist() == [-100] * 6  # data without a scene: all ignored


def test_shape_aux_trains_a_head_kept_out_of_the_model_and_resumes_exactly(tmp_path, capsys):
    import numpy as np
    import pytest
    from safetensors.torch import load_file

    from stamp.train.checkpoint import latest_checkpoint

    mod = _load("shape_aux")

    def run(out, *extra):  # the script's command: python experiments/shape_aux.py train CONFIG ...
        config = str(SCRIPT.parents[1] / "configs" / "tiny-synth.yaml")
        argv = ["train", config, "--no-progress", *TINY_RUN, *common, f"run.out_dir={out}", *extra]
        assert mod.main(argv) == 0
        return latest_checkpoint(out)

    def weights(ckpt):
        return load_file(str(ckpt / "model" / "model.safetensors"))

    common = ["run.steps=4", "run.save_every=2", "run.keep_checkpoints=5", "--weight", "0.5"]
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    last = run(full_dir)
    csv_text = (full_dir / "metrics.csv").read_text()
    shape_losses = [float(line.split(",")[-1]) for line in csv_text.splitlines() if ",shape_loss," in line]
    # (0 for a batch in which no cell is at least half covered by one object: small tiny-config images)
    assert len(shape_losses) == 4 and all(v >= 0 for v in shape_losses) and max(shape_losses) > 1.0
    head = load_file(str(last / "auxiliary.safetensors"))
    assert set(head) == {"shape_aux.head.weight", "shape_aux.head.bias"}
    assert head["shape_aux.head.weight"].shape[0] == 9  # SynthRef's nine kinds
    assert not any("shape" in k or "auxiliary" in k for k in weights(last))  # the exported model has no head
    # stopped half-way and resumed: the same weights, head included, as the uninterrupted run
    run(cut_dir, "run.stop_at_step=2")
    resumed = run(cut_dir, "--resume")
    a, b = weights(last), weights(resumed)
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=1e-6, err_msg=k)
    head_b = load_file(str(resumed / "auxiliary.safetensors"))
    for k in head:
        np.testing.assert_allclose(head[k].numpy(), head_b[k].numpy(), atol=1e-6, err_msg=k)
    capsys.readouterr()
    assert mod.main(["segment", "x.png"]) == 2 and "usage: python experiments/shape_aux.py train" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        mod.main(["train", "--help"])
    help_text = capsys.readouterr().out
    assert "overrides" in help_text and "--weight" in help_text


def test_the_shape_recipe_names_its_script_and_is_a_stamp_config(monkeypatch):
    """The bundled model's last recipe is trained by experiments/shape_aux.py, whose command (its second
    line, also in the recipes' README) parses; the config itself is a plain STAMP training config."""
    import shlex

    from stamp.train.config import TrainConfig
    from stamp.yaml_config import load_config

    root = SCRIPT.parents[1]
    recipe = root / "configs" / "tiny-synth" / "final.yaml"
    monkeypatch.chdir(root)
    command = shlex.split(recipe.read_text().splitlines()[1].lstrip("#"))
    assert command[:3] == ["python", "experiments/shape_aux.py", "train"]
    args = _load("shape_aux").build_parser().parse_args(command[2:])
    assert args.weight == 0.3
    load_config(TrainConfig, args.config, args.overrides)
    assert " ".join(command) in (root / "configs" / "tiny-synth" / "README.md").read_text()


def test_probe_image_token_states_ignore_the_prompt_and_left_padding(tiny_model, tiny_processor):
    """The prompt pass at the image tokens (experiments/probe_objects.py): (cells, hidden), the same for
    any question (it comes after the image) and the same inside a left-padded batch; the vision tower
    does not run again."""
    states = _load("probe_objects").image_token_states
    from stamp.inference.generation import prefill

    pred = StampPredictor(tiny_model, tiny_processor)
    pred.set_image(random_image(150, 220, 3))
    gh, gw = pred.grid_hw
    short = states(pred, "Hi.")
    long = states(pred, "A much longer question about the colour of the second object?")
    assert short.shape == (gh * gw, tiny_model.config.get_text_config().hidden_size)
    assert pred.image_features.shape[0] == gh * gw and pred.vision_calls == 1
    torch.testing.assert_close(short, long, atol=1e-5, rtol=0)
    reqs = [
        pred._request(pred._image, pred.image_features, p, None, None) for p in ("Hi.", "Segment it. " * 5)
    ]
    batch = prefill(tiny_model, reqs, pred.pad_id)
    assert batch.attention_mask[0].sum() < batch.attention_mask.shape[1]  # row 0 is left-padded
    torch.testing.assert_close(batch.hidden[0][batch.image_tokens[0]], short, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="no image"):
        states(StampPredictor(tiny_model, tiny_processor))
