"""`stamp train`: one process on CPU/GPU, or several through `accelerate launch`.

    stamp train configs/tiny-synth.yaml run.steps=200
    accelerate launch --multi_gpu --num_processes 2 -m stamp train configs/tiny-synth.yaml  # 2 ranks

Data is a deterministic function of the global sample index (optimizer step x global batch + offset),
so `--resume` continues with exactly the samples an uninterrupted run would have seen.

A script that trains something STAMP's config does not describe (an experiment) builds its `Trainer`
itself and says what differs through its keyword arguments, chosen once and passed explicitly: a
rewrite of each encoded example (`example_transform`), whether placeholders are planned
(`placeholders`), extra loss terms with their weights (`extra_losses`, `ExtraLoss`) and files written
beside each checkpoint's weights (`model_files`).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from stamp.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_partition,
    partition_staging_dir,
    remove_partial_checkpoints,
    save_checkpoint,
    save_partition,
)
from stamp.train.config import TrainConfig
from stamp.train.logging import MetricsLog
from stamp.train.step import (
    BoundTransform,
    ExtraFields,
    ExtraLossFactory,
    StampTrainingModule,
    build_extra_losses,
)
from stamp.yaml_config import ConfigError

AUXILIARY_FILE = "auxiliary.safetensors"
"""A checkpoint's file of the extra loss terms' parameters (kept out of its exported model)."""


def lr_lambda(cfg: TrainConfig):
    o, total = cfg.optim, cfg.run.steps

    def fn(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
        if o.schedule == "linear":
            return 1.0 - (1.0 - o.min_lr_ratio) * progress
        return o.min_lr_ratio + (1.0 - o.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        *,
        resume: bool = False,
        progress: bool = True,
        example_transform: Callable[[dict, Any], dict] | None = None,
        placeholders: bool = True,
        extra_losses: Mapping[str, tuple[ExtraLossFactory, float]] | None = None,
        model_files: Mapping[str, str] | None = None,
        validate: Callable[[Any], dict[str, float]] | None = None,
    ):
        """Args:
        cfg: the run (model, data, optimizer, losses, run settings).
        resume: continue from the newest checkpoint under `cfg.run.out_dir`.
        progress: show a progress bar.
        example_transform: `(example, settings) -> example`, applied to each encoded training
            example (`StampProcessor.encode_sample`) before collation, with the model's
            `StampSettings` (e.g. masks spelled as text). None: the examples as encoded.
        placeholders: plan N placeholder slots after each `<|seg|>` and fit the classifier on them
            (STAMP); False for examples whose masks are not placeholder targets.
        extra_losses: NAME -> (factory, weight): loss terms added to STAMP's (`ExtraLoss`), each
            built by its factory for the model about to be trained; weight 0 leaves a term out.
            NAME is an identifier.
        model_files: file name -> text, written into every checkpoint's model folder beside the
            weights (what a script needs to use the model again).
        validate: `model -> metrics`, run every `run.eval_every` steps on the main process with the
            model in eval mode (`stamp train` passes SynthRef val: `stamp.eval.validation`); required
            when `run.eval_every` > 0.
        """
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        from stamp.train.build import build_model
        from stamp.train.data import TrainStream

        self.cfg = cfg
        self.out_dir = Path(cfg.run.out_dir)
        extra_losses = dict(extra_losses or {})
        for name, (_, weight) in extra_losses.items():
            if not name.isidentifier():
                raise ValueError(f"an extra loss's name is an identifier, got {name!r}")
            if weight < 0:
                raise ValueError(f"the weight of extra loss {name!r} must be >= 0, got {weight}")
        self.model_files = dict(model_files or {})
        if cfg.run.eval_every and cfg.run.eval_every <= cfg.run.steps and validate is None:
            raise ConfigError(
                "run.eval_every > 0 needs a validation function (`stamp train` passes SynthRef val); "
                "pass validate=... or set run.eval_every=0"
            )
        self.validate = validate
        if cfg.run.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("run.device is 'cuda' but no CUDA device is available (use run.device=auto)")
        cpu = cfg.run.device == "cpu" or (cfg.run.device == "auto" and not torch.cuda.is_available())
        if cfg.run.threads > 0:
            torch.set_num_threads(cfg.run.threads)
        handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]
        if cpu and _env_flag("ACCELERATE_USE_DEEPSPEED") and int(os.environ.get("LOCAL_RANK", -1)) != -1:
            # accelerate sets DeepSpeed up only off its `cpu` path, and on a machine without an
            # accelerator it then finds no backend to name: ZeRO over gloo needs both said explicitly
            if torch.cuda.is_available():
                raise ConfigError(
                    "DeepSpeed on the CPU of a CUDA machine is not supported; use run.device=auto"
                )
            from accelerate.utils import InitProcessGroupKwargs

            handlers.append(InitProcessGroupKwargs(backend="gloo"))
            cpu = False
        self.accel = Accelerator(cpu=cpu, kwargs_handlers=handlers)
        _check_sharding_honoured(self.accel.distributed_type.name)
        if resume and self.accel.is_main_process:
            remove_partial_checkpoints(self.out_dir)  # what a killed save left: never a checkpoint
        self.resume_from = latest_checkpoint(self.out_dir) if resume else None
        if resume and self.resume_from is None and self.accel.is_main_process:
            print(f"stamp train: no checkpoint under {self.out_dir}; starting from scratch")
        if not resume and self.accel.is_main_process:
            _check_fresh_out_dir(self.out_dir)
        torch.manual_seed(cfg.run.seed)
        self.model, self.processor = build_model(
            cfg, weights_from=self.resume_from / "model" if self.resume_from else None
        )
        terms = build_extra_losses(extra_losses, self.model)
        self.stream = TrainStream(
            cfg.data,
            self.processor,
            seed=cfg.run.seed,
            example_transform=(
                None if example_transform is None else BoundTransform(example_transform, self.model.stamp)
            ),
            pixel_dtype=torch.bfloat16 if cfg.run.precision == "bf16" else None,  # (exact: see TrainStream)
            planner=self.model.batch_planner(placeholders=placeholders),
            extra_fields=ExtraFields(terms) if terms else None,
        )
        self._data_wait = 0.0  # seconds spent waiting for batches since the last log line
        weights = {"text_weight": cfg.loss.text, "bce_weight": cfg.loss.bce, "dice_weight": cfg.loss.dice}
        extra_weights = {name: weight for name, (_, weight) in extra_losses.items()}
        training_module = StampTrainingModule(self.model, weights, terms, extra_weights)
        params = [p for p in self.model.parameters() if p.requires_grad]
        # the extra terms' parameters last, so the model's optimizer state keeps its order
        params += [p for p in training_module.auxiliary.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.deepspeed = self.accel.state.deepspeed_plugin is not None
        if self.deepspeed:  # batches come from our own stream, not a DataLoader accelerate could inspect
            ds = self.accel.state.deepspeed_plugin.deepspeed_config
            ds["train_micro_batch_size_per_gpu"] = cfg.optim.batch_size
            ds["gradient_accumulation_steps"] = cfg.optim.grad_accum
            ds["gradient_clipping"] = cfg.optim.grad_clip
            ds.pop("train_batch_size", None)
            if int(ds.get("zero_optimization", {}).get("stage", 0)) > 2:
                raise ConfigError(
                    "DeepSpeed ZeRO stage 3 is not supported (it partitions the weights; use FSDP, or stage 2)"
                )
        self.module, self.optimizer = self.accel.prepare(training_module, self.optimizer)
        if self.accel.num_processes > 1 and self.accel.is_main_process:
            how = self.accel.distributed_type.name
            if self.deepspeed:
                stage = self.accel.state.deepspeed_plugin.deepspeed_config["zero_optimization"]["stage"]
                how += f" ZeRO stage {stage} ({type(self.optimizer.optimizer).__name__})"
            print(
                f"stamp train: {self.accel.num_processes} processes, {how}, backend {self.accel.state.backend}"
            )
        self.step, self.progress = 0, progress and self.accel.is_main_process
        if self.resume_from is not None:
            self._load_auxiliary(self.resume_from)
            # (a sharded run takes no whole-optimizer state: a checkpoint of a DDP run restarts its moments)
            state = load_checkpoint(
                self.resume_from, None if self.sharded else self.optimizer, self.scheduler
            )
            self.step = int(state["step"])
            restored = state["optimizer"] is not None and not self.sharded
            if self.deepspeed:  # each rank its own partition, where the run had as many ranks
                part = load_partition(self.resume_from, self.accel.process_index, self.accel.num_processes)
                if part is not None:
                    self._partition_optimizer().load_state_dict(part)
                restored = self.accel.gather(torch.tensor([part is not None])).all().item()
            if not restored and self.accel.is_main_process:
                print(
                    f"stamp train: {self.resume_from.name} holds no optimizer state for this run (an FSDP "
                    "run, or DeepSpeed with another number of ranks); the optimizer moments restart, so "
                    "this resume is not bit-exact"
                )
        self.log = MetricsLog(self.out_dir, resume_step=self.step) if self.accel.is_main_process else None

    # ------------------------------------------------------------------ steps
    @property
    def global_batch(self) -> int:
        o = self.cfg.optim
        return o.batch_size * o.grad_accum * self.accel.num_processes

    def _autocast(self):
        if self.cfg.run.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.accel.device.type, dtype=torch.bfloat16)

    def micro_batches(self, end_step: int | None = None):
        """This rank's micro-batches from the current step to `end_step` (default: run.steps), in order."""
        from stamp.train.data import MicroBatches, micro_batch_loader

        o = self.cfg.optim
        batches = MicroBatches(
            self.stream,
            batch_size=o.batch_size,
            grad_accum=o.grad_accum,
            rank=self.accel.process_index,
            world=self.accel.num_processes,
        )
        end = self.cfg.run.steps if end_step is None else end_step
        return micro_batch_loader(
            batches,
            self.step * o.grad_accum,
            end * o.grad_accum,
            num_workers=self.cfg.data.num_workers,
            pin_memory=self.accel.device.type == "cuda",
        )

    def train_step(self, batches) -> dict[str, float | torch.Tensor]:
        """One optimizer step over the next `grad_accum` micro-batches of the iterator `batches`
        (this rank's share of the data, from `micro_batches`).

        Returns the step's statistics; losses and the gradient norm stay 0-d device tensors (reading
        them would make the host wait for the device every step), so take `float()` when logging.
        """
        o = self.cfg.optim
        self.module.train()
        sums: dict[str, float | torch.Tensor] = {}
        for micro in range(o.grad_accum):
            t_wait = time.perf_counter()
            cpu_batch = dict(next(batches))
            self._data_wait += time.perf_counter() - t_wait
            # the step's index bookkeeping, planned on the CPU (by the data workers, or here)
            plan = cpu_batch.pop("plan", None) or self.stream.planner(cpu_batch)
            batch = {k: v.to(self.accel.device, non_blocking=True) for k, v in cpu_batch.items()}
            batch["plan"] = plan.to(self.accel.device)
            last = micro == o.grad_accum - 1
            # DeepSpeed scales by its own accumulation count and steps at its boundary, which accelerate
            # takes from `sync_gradients` (left True, every micro-batch would be a boundary and a step)
            if self.deepspeed:
                self.accel.sync_gradients = last
            sync = contextlib.nullcontext() if last or self.deepspeed else self.accel.no_sync(self.module)
            with sync, self._autocast():
                loss, out, extra = self.module(**batch)
                self.accel.backward(loss if self.deepspeed else loss / o.grad_accum)
            values = {name: getattr(out, name) for name in ("text_loss", "bce_loss", "dice_loss")}
            for name, value in {"loss": loss, **values, **extra}.items():
                if value is not None:
                    sums[name] = sums.get(name, 0.0) + value.detach().float() / o.grad_accum
        if o.grad_clip > 0:  # (DeepSpeed clips inside its step, per its config, and reports no norm here)
            norm = self.accel.clip_grad_norm_(self.module.parameters(), o.grad_clip)
            if norm is not None:
                sums["grad_norm"] = norm.detach() if isinstance(norm, torch.Tensor) else norm
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        sums["lr"] = self.scheduler.get_last_lr()[0]
        return sums

    @property
    def sharded(self) -> bool:
        """FSDP or DeepSpeed: the optimizer state is partitioned across ranks (and with FSDP the weights)."""
        return self.accel.distributed_type.name in ("FSDP", "DEEPSPEED")

    def _partition_optimizer(self) -> torch.optim.Optimizer:
        """DeepSpeed: the torch optimizer over this rank's ZeRO partition (DeepSpeed's optimizer wraps it)."""
        return self.optimizer.optimizer.optimizer

    def save(self) -> Path | None:
        self.accel.wait_for_everyone()
        path, weights, partitions, auxiliary = None, None, None, None
        if self.deepspeed:  # each rank stages its optimizer partition; the checkpoint takes them in
            partitions = partition_staging_dir(self.out_dir, self.step)
            if self.accel.is_main_process and partitions.exists():  # (left by a killed run)
                shutil.rmtree(partitions)
            self.accel.wait_for_everyone()
            save_partition(partitions, self.accel.process_index, self._partition_optimizer().state_dict())
            self.accel.wait_for_everyone()
        if self.accel.distributed_type.name == "FSDP":  # gather the full weights (every rank takes part)
            full = self.accel.get_state_dict(self.module)
            weights = {k.removeprefix("model."): v for k, v in full.items() if k.startswith("model.")}
            auxiliary = {
                k.removeprefix("auxiliary."): v for k, v in full.items() if k.startswith("auxiliary.")
            }
        if self.accel.is_main_process:
            module = self.accel.unwrap_model(self.module)
            unwrapped = module.model
            if auxiliary is None:
                auxiliary = module.auxiliary.state_dict()
            state = {
                "samples_seen": self.step * self.global_batch,
                "world_size": self.accel.num_processes,
                "config": asdict(self.cfg),
            }
            path = save_checkpoint(
                self.out_dir,
                self.step,
                lambda p: _save_model(unwrapped, self.processor, p, weights, self.model_files),
                None if self.sharded else self.optimizer,
                self.scheduler,
                state,
                self.cfg.run.keep_checkpoints,
                partitions,
                extra_files={AUXILIARY_FILE: auxiliary} if auxiliary else None,
            )
        self.accel.wait_for_everyone()
        return path

    def evaluate(self) -> dict[str, float]:
        """The run's validation (`validate`) on the model in eval mode, under the run's autocast."""
        model = self.accel.unwrap_model(self.module).model
        model.eval()
        with self._autocast():
            return self.validate(model)

    # ------------------------------------------------------------------ loop
    def fit(self) -> Path | None:
        run, start_time = self.cfg.run, time.time()
        bar = tqdm(total=run.steps, initial=self.step, desc="train", unit="step", disable=not self.progress)
        last_saved, t_window, n_window = None, time.time(), 0
        self._data_wait = 0.0
        batches = iter(self.micro_batches())
        while self.step < (run.stop_at_step or run.steps):
            stats = self.train_step(batches)
            n_window += 1
            if self.log is not None and (self.step % run.log_every == 0 or self.step == run.steps):
                elapsed = time.time() - t_window
                stats = {k: float(v) for k, v in stats.items()}  # (the only wait for the device)
                stats["samples_per_s"] = n_window * self.global_batch / max(elapsed, 1e-9)
                # the share of the wall time spent waiting for batches: near 1 means data-bound
                stats["data_wait_frac"] = min(1.0, self._data_wait / max(elapsed, 1e-9))
                self._data_wait = 0.0
                t_window, n_window = time.time(), 0
                self.log.write(self.step, "train", stats)
                bar.set_postfix(
                    loss=f"{stats['loss']:.3f}",
                    sps=f"{stats['samples_per_s']:.1f}",
                    data_wait=f"{stats['data_wait_frac']:.0%}",
                )
            bar.update(1)
            if run.eval_every and self.step % run.eval_every == 0 and self.accel.is_main_process:
                metrics = self.evaluate()
                self.log.write(self.step, "val", metrics)
                bar.write(f"step {self.step} val: " + ", ".join(f"{k} {v:.1f}" for k, v in metrics.items()))
            out_of_time = run.max_minutes > 0 and (time.time() - start_time) / 60 >= run.max_minutes
            stop_here = self.step == run.stop_at_step
            if self.step % run.save_every == 0 or self.step == run.steps or out_of_time or stop_here:
                last_saved = self.save()
            if out_of_time or stop_here:
                why = f"time limit of {run.max_minutes} min" if out_of_time else "run.stop_at_step"
                bar.write(f"stamp train: {why} reached at step {self.step}; resume with --resume")
                break
        bar.close()
        if self.accel.num_processes > 1 and self.accel.distributed_type.name != "FSDP":  # (FSDP: shards)
            self.check_replicas_in_sync()
            self.accel.wait_for_everyone()
            torch.distributed.destroy_process_group()  # before exit, not in destructors (gloo aborts)
        if self.log is not None:
            self.log.plot()
            self.log.close()
        return last_saved

    def _load_auxiliary(self, checkpoint: Path) -> None:
        """Restore the extra loss terms' parameters from `checkpoint` (each term it lacks restarts from
        its fresh parameters, and says so)."""
        terms = self.accel.unwrap_model(self.module).auxiliary
        if len(terms) == 0:
            return
        saved = {}
        if (checkpoint / AUXILIARY_FILE).is_file():
            from safetensors.torch import load_file

            saved = load_file(str(checkpoint / AUXILIARY_FILE), device=str(self.accel.device))
        for name, term in terms.items():
            mine = {k.removeprefix(f"{name}."): v for k, v in saved.items() if k.startswith(f"{name}.")}
            if mine:
                term.load_state_dict(mine)
            elif self.accel.is_main_process and len(term.state_dict()) > 0:
                print(
                    f"stamp train: {checkpoint.name} holds no parameters of extra loss '{name}'; they restart"
                )

    def check_replicas_in_sync(self) -> str:
        """All ranks must hold identical weights after data-parallel training; raises if not."""
        import hashlib

        model = self.accel.unwrap_model(self.module).model
        digest = hashlib.sha256()
        for name, p in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(p.detach().float().cpu().numpy().tobytes())
        mine = digest.hexdigest()
        everyone = [None] * self.accel.num_processes
        torch.distributed.all_gather_object(everyone, mine)
        print(f"stamp train: rank {self.accel.process_index} weights sha256 {mine}", flush=True)
        if len(set(everyone)) != 1:
            raise RuntimeError(f"data-parallel replicas diverged: {everyone}")
        return mine


def _save_model(
    model, processor, path: Path, state_dict: dict | None = None, files: dict[str, str] | None = None
) -> None:
    """`state_dict`: the full weights where the model's own parameters are shards (FSDP); `files`: more
    files of the model folder (name -> text)."""
    if hasattr(model, "peft_config"):  # LoRA: the adapter, loadable with its base model
        model.save_pretrained(str(path), state_dict=state_dict)
        processor.save_pretrained(path)
    else:
        model.save_stamp(path, processor, state_dict=state_dict)
    for name, text in (files or {}).items():
        (Path(path) / name).write_text(text)


def _check_sharding_honoured(got: str) -> None:
    """accelerate silently runs plain data parallelism (or none) when an FSDP config meets a CPU-only
    setup (its FSDP needs accelerator devices); a run that would not shard as asked is stopped instead."""
    for name, env in (("FSDP", "ACCELERATE_USE_FSDP"), ("DEEPSPEED", "ACCELERATE_USE_DEEPSPEED")):
        if _env_flag(env) and got != name:
            raise ConfigError(
                f"the accelerate config asks for {name} but accelerate set up {got} (FSDP needs CUDA "
                "devices; on CPU use configs/accelerate/ddp.yaml, or zero2.yaml for DeepSpeed ZeRO)"
            )


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true")


def _check_fresh_out_dir(out_dir: Path) -> None:
    if (out_dir / "checkpoints").exists() and any((out_dir / "checkpoints").iterdir()):
        raise FileExistsError(
            f"{out_dir} already holds checkpoints; use --resume to continue or choose another run.out_dir"
        )


_FINISHED_DISTRIBUTED: list = []
"""Trainers of finished multi-process runs, never freed (see `train`)."""


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True, **extras) -> Path | None:
    """Train per `cfg`; returns the last checkpoint directory (its `model/` folder is a loadable model).
    `extras`: the `Trainer`'s keyword arguments for what the config does not describe (an experiment's
    `example_transform`, `placeholders`, `extra_losses`, `model_files`)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    trainer = Trainer(cfg, resume=resume, progress=progress, **extras)
    last = trainer.fit()
    if trainer.accel.num_processes > 1:
        # Freeing the DDP model frees its gloo process group, whose destructor joins the group's worker
        # thread while holding the GIL; that thread may still need the GIL to free the tensors of the last
        # collective, and the two can wait for each other forever. So the trainer
        # is kept, and `stamp train` ends such a process with os._exit once everything is written.
        _FINISHED_DISTRIBUTED.append(trainer)
    return last
