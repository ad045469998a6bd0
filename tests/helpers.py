"""Shared test helpers (plain functions, imported by the tests)."""

import importlib.util
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stamp.data.sample import Turn


def random_image(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8))


def full_recompute_logits(model, proc, image, prompt: str, answer: str) -> list[torch.Tensor]:
    """Mask logits of the reference forward (`stamp.model.reference`) over [conversation ; placeholders]:
    the specification the cached generation is held equal to."""
    from stamp.model.reference import reference_forward

    enc = proc.encode_image(image)
    ids, _ = proc.encode_turns([Turn("user", prompt), Turn("assistant", answer)], enc)
    return reference_forward(model, torch.tensor(ids), enc.pixel_values, enc.grid_thw).mask_logits


def run_two_cpu_ranks(stamp_args: list[str], port: int, timeout: int = 600, accelerate_config=None):
    """`accelerate launch` of `stamp <stamp_args>` as 2 gloo ranks on the CPU; the CompletedProcess.

    Plain data parallelism (DDP) by default; `accelerate_config` (a file of configs/accelerate/) instead
    launches what it describes, with its process count set to 2.
    """
    import os
    import subprocess
    import sys

    if accelerate_config is None:
        env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
        how = ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    else:
        env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
        env["OMP_NUM_THREADS"] = "1"
        how = ["--config_file", str(accelerate_config)]
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *how,
        "--num_processes",
        "2",
        "--main_process_port",
        str(port),
        "-m",
        "stamp",
    ]
    return subprocess.run(launch + stamp_args, capture_output=True, text=True, env=env, timeout=timeout)


EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load_experiment(script: str):
    """An experiments/ script as a module (they are scripts, not part of the package)."""
    spec = importlib.util.spec_from_file_location(script, EXPERIMENTS / f"{script}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny_next_token_model(seed: int = 0):
    """The tiny random model, as a model of the next-token baseline (experiments/next_token.py: a STAMP
    model used through that script; saved with its `save_model`)."""
    from stamp.tiny import build_tiny_model

    return build_tiny_model(seed=seed)


class LoopingHead(torch.nn.Module):
    """An lm_head that always says the same token: a model stuck in a degenerate loop."""

    def __init__(self, head, token: int):
        super().__init__()
        self.head, self.token = head, token

    def forward(self, h):
        return self.head(h).index_fill(-1, torch.tensor([self.token]), 1e4)


def save_tiny_model(path, seed: int = 0, **kwargs) -> None:
    """A tiny random model and its processor saved as a complete model folder at `path`."""
    from stamp.tiny import build_tiny_model

    model, processor = build_tiny_model(seed=seed, **kwargs)
    model.save_stamp(path, processor)
