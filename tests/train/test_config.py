"""Every shipped YAML loads; overrides are typed; unknown keys name the closest valid key."""

from pathlib import Path

import pytest

from stamp.train.config import TrainConfig
from stamp.yaml_config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2] / "configs"
CONFIGS = sorted(p for p in ROOT.rglob("*.yaml") if "accelerate" not in p.relative_to(ROOT).parts)
ACCELERATE_CONFIGS = sorted((ROOT / "accelerate").glob("*.yaml"))


def test_there_are_configs():
    assert any(p.name == "tiny-synth.yaml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path):
    text = path.read_text()
    second = text.splitlines()[1]
    assert text.startswith("#") and second.startswith("#") and ("stamp " in second or "python " in second), (
        "each config opens with a comment and the command that runs it"
    )
    cfg = load_config(TrainConfig, path)
    assert cfg.run.steps >= 1


def test_overrides_and_types(tmp_path):
    cfg = load_config(
        TrainConfig,
        None,
        ["optim.lr=3e-4", "run.steps=7", "model.lora.r=8", "data.task_weights={refer: 1.0}"],
    )
    assert cfg.optim.lr == 3e-4 and cfg.run.steps == 7 and cfg.model.lora.r == 8
    assert cfg.data.task_weights == {"refer": 1.0}
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(TrainConfig, None, ["run.steps=abc"])


def test_overrides_address_list_items():
    recipe = ROOT / "stamp-2b-finetune.yaml"
    cfg = load_config(TrainConfig, recipe, ["data.sources.0.path=/mnt/lisa", "data.sources.1.weight=0.5"])
    assert cfg.data.sources[0].path == "/mnt/lisa" and cfg.data.sources[1].weight == 0.5
    assert load_config(TrainConfig, recipe).data.sources[0].path != "/mnt/lisa"  # the file is untouched
    cfg = load_config(
        TrainConfig,
        None,
        ["model.mrope_section=[8,12,12]", "model.mrope_section.0=10", "model.mrope_section.1=10"],
    )
    assert cfg.model.mrope_section == [10, 10, 12]
    with pytest.raises(ConfigError, match="set the whole list"):  # only the schema's default exists
        load_config(TrainConfig, None, ["model.mrope_section.0=4"])
    cfg = load_config(TrainConfig, recipe, ["data.sources.*.path=/mnt/all"])
    assert {s.path for s in cfg.data.sources} == {"/mnt/all"} and len(cfg.data.sources) == 3
    with pytest.raises(ConfigError, match="did you mean 'path'"):
        load_config(TrainConfig, recipe, ["data.sources.0.pth=/x"])
    with pytest.raises(ConfigError, match="item"):
        load_config(TrainConfig, recipe, ["data.sources.9.path=/x"])
    with pytest.raises(ConfigError, match="list"):
        load_config(TrainConfig, recipe, ["data.sources.path=/x"])


def test_unknown_key_suggests_closest(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        load_config(TrainConfig, None, ["optim.lrr=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("# x\n# stamp train bad.yaml\nmodel:\n  hiden_size: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'hidden_size'"):
        load_config(TrainConfig, bad)


def test_invalid_values_are_config_errors():
    with pytest.raises(ConfigError, match="schedule"):
        load_config(TrainConfig, None, ["optim.schedule=triangle"])
    with pytest.raises(ConfigError, match="mrope_section"):
        load_config(TrainConfig, None, ["model.hidden_size=64"])


def test_accelerate_configs_parse():
    import yaml

    kinds = set()
    for path in ACCELERATE_CONFIGS:
        text = path.read_text()
        assert "accelerate launch" in text.splitlines()[1]
        data = yaml.safe_load(text)
        kinds.add(data["distributed_type"])
        assert data["num_processes"] >= 1
    assert {"MULTI_GPU", "FSDP", "DEEPSPEED"} <= kinds


def test_vqa_kind_weights_reach_the_synthref_stream():
    from stamp.train.data import open_source

    kinds = "data.vqa_kind_weights={count: 1, colour: 1, shape: 3, exists: 1, position: 2}"
    cfg = load_config(TrainConfig, ROOT / "tiny-synth.yaml", [kinds])
    assert cfg.data.vqa_kind_weights == {"count": 1, "colour": 1, "shape": 3, "exists": 1, "position": 2}
    ds = open_source(cfg.data.sources[0], cfg.data)
    assert ds.vqa_kind_probs == (0.125, 0.125, 0.375, 0.125, 0.25)
    control = load_config(TrainConfig, ROOT / "tiny-synth.yaml")
    assert open_source(control.data.sources[0], control.data).vqa_kind_probs is None
    with pytest.raises(ValueError, match="unknown SynthRef VQA kind"):
        bad = load_config(TrainConfig, None, ["data.vqa_kind_weights={shapes: 1}"])
        open_source(bad.data.sources[0], bad.data)
