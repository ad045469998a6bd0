"""Saved weights follow the user's umask like every other file (safetensors alone writes 0o600)."""

import os
from pathlib import Path

import torch

from stamp.train.checkpoint import save_checkpoint


def _modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mode & 0o777 for p in folder.rglob("*") if p.is_file()}


def _plain(tmp_path: Path) -> int:
    (tmp_path / "plain").write_text("")
    return (tmp_path / "plain").stat().st_mode & 0o777


def test_saved_model_weights_follow_the_umask(tiny_model, tiny_processor, tmp_path):
    want = _plain(tmp_path)
    tiny_model.save_stamp(tmp_path / "model", tiny_processor)
    modes = _modes(tmp_path / "model")
    assert "model.safetensors" in modes and set(modes.values()) == {want}, modes


def test_checkpoint_files_follow_the_umask(tiny_model, tmp_path):
    old = os.umask(0o027)  # another umask than the default: followed, not a fixed 0o644
    try:
        want = _plain(tmp_path)
        params = [torch.nn.Parameter(torch.zeros(2))]
        optimizer = torch.optim.AdamW(params)
        params[0].grad = torch.ones(2)
        optimizer.step()
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        path = save_checkpoint(tmp_path / "run", 1, tiny_model.save_pretrained, optimizer, scheduler, {}, 2)
    finally:
        os.umask(old)
    modes = _modes(path)
    assert {"model/model.safetensors", "optimizer.safetensors", "rng.safetensors"} <= set(modes)
    assert set(modes.values()) == {want} == {0o640}, modes
