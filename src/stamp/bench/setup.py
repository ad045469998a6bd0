"""Which model the benchmark runs, on which machine, with how many threads.

Models:
- `--model DIR`: a saved STAMP model (`stamp.processing.load_model_and_processor`);
- nothing: the bundled model, `tiny-synth`;
- `--preset tiny`: `build_tiny_model()` (hidden 64, 2 layers: the test model);
- `--preset qwen2-vl-2b | qwen2-vl-7b | qwen2.5-vl-3b | qwen2.5-vl-7b`: a RANDOM model with the published
  dimensions, built in the run's dtype on its device (`stamp.bench.presets`);
- `--preset synth`: a RANDOM model with the sizes in configs/tiny-synth.yaml (the bundled model's first network: 4 decoder layers)
  through the training config (`TrainConfig` + `stamp.train.build.build_model`), so the two never
  drift apart; `--preset PATH.yaml`: the same for any training config.
For a fixed N and history, random weights cost exactly what trained weights cost.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path

import torch

from stamp.bench.presets import PRESETS as REAL_PRESETS

PRESETS = ("tiny", "synth", *REAL_PRESETS)
SYNTH_CONFIG = "configs/tiny-synth.yaml"


def _find_config(name: str) -> Path:
    """`name` relative to the working directory, else to the source checkout holding this package."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (base / name).is_file():
            return base / name
    raise FileNotFoundError(f"{name} not found (run from the repository root, or pass --preset PATH.yaml)")


def load_bench_model(
    model: str | None = None,
    preset: str | None = None,
    device: str = "cpu",
    attn: str | None = None,
    dtype: torch.dtype | None = None,
):
    """(model in eval mode on `device`, its processor, a dict describing where it came from). `attn`: override the
    attention implementation ("sdpa" or "eager") of the whole model. `dtype`: the dtype a real-size
    preset is built in (default bf16); other models load as saved."""
    if model is not None and preset is not None:
        raise ValueError("give either --model or --preset, not both")
    if preset in REAL_PRESETS:
        from stamp.bench.presets import build_preset_model

        net, processor, memory = build_preset_model(preset, dtype or torch.bfloat16, device)
        source = {"kind": "preset", "name": preset, "random_weights": True, "memory_estimate": memory}
    elif preset == "tiny":
        from stamp.tiny import build_tiny_model

        (net, processor), source = (
            build_tiny_model(seed=0),
            {"kind": "preset", "name": "tiny", "random_weights": True},
        )
    elif preset is not None:
        from stamp.train.build import build_model
        from stamp.train.config import TrainConfig
        from stamp.yaml_config import load_config

        path = _find_config(SYNTH_CONFIG) if preset == "synth" else Path(preset)
        if preset != "synth" and not (path.suffix in (".yaml", ".yml") and path.is_file()):
            raise ValueError(f"unknown preset {preset!r}: use {', '.join(PRESETS)} or a training YAML file")
        cfg = load_config(TrainConfig, path)
        if cfg.model.init != "scratch":
            raise ValueError(f"{path}: model.init must be 'scratch' for a preset (use --model for weights)")
        net, processor = build_model(cfg)
        source = {"kind": "preset", "name": preset, "config": str(path), "random_weights": True}
    else:
        from stamp.bundled import is_bundled, model_name
        from stamp.processing import load_model_and_processor

        net, processor = load_model_and_processor(model_name(model))
        source = {
            "kind": "bundled" if is_bundled(model) else "path",
            "name": model or "bundled",
            "random_weights": False,
        }
    if attn is not None:
        from stamp.model.attention import SUPPORTED_ATTN_IMPLEMENTATIONS

        if attn not in SUPPORTED_ATTN_IMPLEMENTATIONS:
            raise ValueError(f"--attn must be one of {SUPPORTED_ATTN_IMPLEMENTATIONS}, got {attn!r}")
        net.set_attn_implementation(attn)
    return net.eval().requires_grad_(False).to(device), processor, source


def describe_model(model, source: dict) -> dict:
    """The `model` section of the JSON."""
    from stamp.bench.flops import TextDims

    lm = sum(p.numel() for p in model.model.language_model.parameters())
    vision = sum(p.numel() for p in model.model.visual.parameters())
    heads = sum(p.numel() for p in model.lm_head.parameters()) + sum(
        p.numel() for p in model.classifier.parameters()
    )
    return {
        **source,
        "family": model.config.model_type,
        "text": TextDims.from_model(model).to_dict(),
        "params_language": lm,
        "params_vision": vision,
        "params_heads": heads,
        "attn_implementation": model.attn_implementation,
        "position_mode": model.stamp.position_mode,
        "attention_mode": model.stamp.attention_mode,
        "mask_embedding": model.stamp.mask_embedding,
    }


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count (default: the cores this process may run on); returns it."""
    if threads is None or threads <= 0:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (other work on the machine skews timings), or None."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def machine_info(devices: list[str]) -> dict:
    """The `machine` section of the JSON."""
    import transformers

    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_env": {
            k: os.environ[k]
            for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")
            if k in os.environ
        },
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "devices": list(devices),
        "load_average_start": load_average(),
    }
    gpus = [torch.device(d) for d in devices if torch.device(d).type == "cuda"]
    if gpus:
        index = gpus[0].index or 0
        props = torch.cuda.get_device_properties(index)
        info["gpu"] = torch.cuda.get_device_name(index)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_driver"] = _gpu_driver(index)
        info["cuda"] = torch.version.cuda
    return info


def _gpu_driver(index: int) -> str | None:
    """The NVIDIA driver version (nvidia-smi), or None where it cannot be asked."""
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", f"--id={index}"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
