"""Training checkpoints: model (safetensors), optimizer (safetensors + JSON), scheduler, data position
and RNG state -- written to a temp dir and renamed, so a killed run never leaves a half checkpoint.

Layout: <out_dir>/checkpoints/step_0000250/{model/, optimizer.safetensors, trainer_state.json, rng.safetensors}
(DeepSpeed runs: `optimizer_ranks/rank00000.{safetensors,json}` ..., one optimizer partition per rank,
in place of optimizer.safetensors.)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from stamp.faults import WriteError, describe, is_fault
from stamp.filemodes import new_dir_mode, plain_modes

STATE_FILE = "trainer_state.json"
PARTITIONS = "optimizer_ranks"


def checkpoint_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoints"


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint under `out_dir`, or None."""
    root = checkpoint_dir(out_dir)
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step_*") if (p / STATE_FILE).is_file())
    return done[-1] if done else None


def remove_partial_checkpoints(out_dir: Path) -> list[str]:
    """Delete what a killed save left under `out_dir`'s checkpoints (temporary `.step_*` folders, never
    renamed into place, so never a checkpoint); returns their names."""
    root = checkpoint_dir(out_dir)
    stale = sorted(p for p in root.glob(".step_*") if p.is_dir()) if root.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return [p.name for p in stale]


def recorded_config(checkpoint: Path) -> dict | None:
    """The training config (`TrainConfig` as a dict) that checkpoint `checkpoint` was written under;
    None for a checkpoint that predates recording it."""
    return json.loads((checkpoint / STATE_FILE).read_text()).get("config")


def _optimizer_to_flat(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {"param_groups": state["param_groups"], "scalars": {}}
    for idx, slots in state["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                meta["scalars"][f"{idx}.{name}"] = value
    return tensors, meta


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    np_state = np.random.get_state()
    meta = {
        "python": _jsonable(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
        if states:
            torch.cuda.set_rng_state_all(states)
    random.setstate(_tuplify(meta["python"]))
    kind, keys, *rest = meta["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))


def _jsonable(x):
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


class CheckpointWriteError(WriteError):
    """Checkpoint `step` could not be written to `path` (a full disk, ...): nothing of it was left, and
    the checkpoints before it are complete (`latest_checkpoint`)."""

    def __init__(self, step: int, path: Path, cause: OSError):
        super().__init__(f"{describe(cause)} while saving step {step} to {path}", cause)
        self.step, self.path = step, path


def save_checkpoint(
    out_dir: Path,
    step: int,
    save_model,
    optimizer,
    scheduler,
    trainer_state: dict,
    keep: int,
    partitions: Path | None = None,
    extra_files: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write checkpoint `step` atomically; `save_model(path)` writes the model folder. Prunes old ones.
    `optimizer=None` writes no optimizer state (sharded runs keep it partitioned across ranks);
    `partitions`: a folder of per-rank optimizer partitions (`save_partition`), moved in as
    `optimizer_ranks/` before the checkpoint becomes visible; `extra_files`: file name -> tensors,
    more safetensors files of the checkpoint (outside its model folder)."""
    root = checkpoint_dir(out_dir)
    final = root / f"step_{step:07d}"
    tmp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".step_{step:07d}.", dir=root))
        os.chmod(tmp, new_dir_mode())  # (mkdtemp makes 0700; a checkpoint should look like any folder)
        save_model(tmp / "model")
        if partitions is not None:
            partitions.rename(tmp / PARTITIONS)
        meta = None
        if optimizer is not None:
            tensors, meta = _optimizer_to_flat(optimizer.state_dict())
            save_file(tensors, str(tmp / "optimizer.safetensors"))
        for name, tensors in (extra_files or {}).items():
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / name))
        rng_tensors, rng_meta = rng_state()
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        state = {
            **trainer_state,
            "step": step,
            "optimizer": meta,
            "scheduler": scheduler.state_dict(),
            "rng": rng_meta,
        }
        (tmp / STATE_FILE).write_text(json.dumps(state))
        plain_modes(tmp)  # safetensors writes 0o600 files; a checkpoint follows the umask like the rest
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        cause = err.cause if isinstance(err, WriteError) else err
        if is_fault(cause):
            raise CheckpointWriteError(step, final, cause) from None
        raise
    done = sorted(p for p in root.glob("step_*") if (p / STATE_FILE).is_file())
    for old in done[: max(0, len(done) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, optimizer, scheduler) -> dict:
    """Restore optimizer (unless None), scheduler and RNG from checkpoint `path`; returns the trainer
    state dict. (The model weights are loaded by the caller from `path / "model"`.)"""
    state = json.loads((path / STATE_FILE).read_text())
    if state["optimizer"] is not None and optimizer is not None:
        optimizer.load_state_dict(
            _optimizer_from_flat(load_file(str(path / "optimizer.safetensors")), state["optimizer"])
        )
    scheduler.load_state_dict(state["scheduler"])
    restore_rng(load_file(str(path / "rng.safetensors")), state["rng"])
    return state


def partition_staging_dir(out_dir: Path, step: int) -> Path:
    """Where each rank of a sharded run writes its optimizer partition before the checkpoint is made."""
    return checkpoint_dir(out_dir) / f".partitions_step_{step:07d}"


def save_partition(folder: Path, rank: int, state: dict) -> None:
    """One rank's optimizer state (a torch optimizer `state_dict()` over its partition): safetensors +
    JSON, written under temporary names and renamed."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors, meta = _optimizer_to_flat(state)
    tmp_t, tmp_m = folder / f".rank{rank:05d}.safetensors", folder / f".rank{rank:05d}.json"
    save_file(tensors, str(tmp_t))
    tmp_m.write_text(json.dumps(meta))
    tmp_t.rename(folder / f"rank{rank:05d}.safetensors")
    tmp_m.rename(folder / f"rank{rank:05d}.json")


def load_partition(checkpoint: Path, rank: int, world: int) -> dict | None:
    """This rank's optimizer partition from `checkpoint`, or None where it holds none for `world` ranks
    (no partitions, or written by a different number of ranks)."""
    folder = checkpoint / PARTITIONS
    if not folder.is_dir() or len(list(folder.glob("rank*.json"))) != world:
        return None
    meta = json.loads((folder / f"rank{rank:05d}.json").read_text())
    return _optimizer_from_flat(load_file(str(folder / f"rank{rank:05d}.safetensors")), meta)
