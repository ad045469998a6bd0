"""Training step throughput and peak memory: the step `stamp train` runs, on synthetic batches.

One step = `StampTrainingModule.forward` (the Trainer's wrapper around `StampModel.stamp_forward`, with
the config's default loss weights) under the Trainer's autocast, `backward`, gradient clipping at the
default norm, `AdamW.step` and `zero_grad(set_to_none=True)`. Batches are built once per batch size the
way the Trainer's data stream builds them (`encode_sample`, the mask decoder's example rewrite,
`collate`, pixels in bf16 under bf16, the step's `BatchPlanner` plan) from synthetic samples: a random
noise image of `image_side` x `image_side` pixels with one rectangle mask, a user request and the
authors' answer "Sure, it is <|seg|>.". They are moved to the device before timing: data loading and
the host-to-device copy are not part of the figures.

Modes: "full" trains every parameter in the weights' own dtype (a real-size preset is built in bf16, as
a pretrained Qwen2-VL loads; the AdamW moments follow the parameters' dtype); "lora" wraps the model with
`stamp.train.build.apply_lora` and the default `LoraConfig` (the authors' r 64, alpha 128, rsLoRA on
q/k/v/o/gate/up/down of the language model; embed_tokens, lm_head and classifier trained in full).
Gradient checkpointing is switched with `stamp.train.build.set_gradient_checkpointing`. The steps
change the (random) weights; the part runs last on each device and leaves the model as it found it
otherwise (LoRA unloaded, checkpointing off, no gradients, eval mode).

Memory: `peak_mem_mb` is the step's peak above what was in use before it (weights and AdamW moments;
gradients are freed between steps), `resident_mb` what was in use, `peak_total_mb` their sum.
`estimate_memory` gives the bytes a configuration needs (weights + gradients + AdamW moments + an
activation estimate) without building anything; `check_train_memory` turns it into a one-line
`PresetMemoryError` when even the smallest requested configuration cannot fit.
"""

from __future__ import annotations

import gc
import re
import statistics
from dataclasses import dataclass, field

import torch

from stamp.bench import presets
from stamp.bench.presets import PresetMemoryError
from stamp.bench.timing import measure, resident_bytes, synchronize

ANSWER = "Sure, it is <|seg|>."
"""The authors' answer to a referring request."""
PROMPT = "Please segment the object in this image."
TEXT_TOKENS = 64
"""Text tokens per sample besides image and placeholder tokens (system prompt, request, answer), for
the activation estimate."""
OVERHEAD_BYTES = 2 * 2**30
"""Added to every estimate: the allocator's cached blocks, the batch, the libraries' own memory."""


@dataclass
class TrainSettings:
    """What the training-step benchmark runs."""

    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 8])
    grad_ckpt: list[bool] = field(default_factory=lambda: [True, False])
    lora: bool = False
    image_side: int = 896
    """Square synthetic images of this side (896 -> 32x32 = 1,024 cells where the processor allows)."""
    precision: str = "bf16"
    """"bf16": the Trainer's bf16 autocast; "fp32": none. The weights keep the dtype they were built in."""
    steps: int = 5
    """Timed steps per configuration (the median is reported)."""
    warmup: int = 2
    lr: float = 1e-5


def synthetic_samples(count: int, side: int, seed: int = 0) -> list:
    """`count` StampSamples: a noise image side x side, one rectangle mask, the authors' answer."""
    import numpy as np
    from PIL import Image

    from stamp.data.sample import StampSample, Turn

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        image = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        mask = np.zeros((side, side), dtype=np.uint8)
        y0, x0 = rng.integers(0, side // 2, size=2)
        mask[y0 : y0 + side // 3, x0 : x0 + side // 3] = 1
        turns = [Turn("user", PROMPT), Turn("assistant", ANSWER)]
        out.append(StampSample(f"bench/train/{i}", image, turns, [mask]))
    return out


def _vision_dims(config) -> tuple[int, int, int]:
    """(depth, width, MLP width) of the vision tower (Qwen2-VL: embed_dim and mlp_ratio; Qwen2.5-VL:
    hidden_size and intermediate_size)."""
    v = config.vision_config
    width = getattr(v, "embed_dim", None) or v.hidden_size
    mlp = getattr(v, "intermediate_size", None) or int(width * v.mlp_ratio)
    return v.depth, width, mlp


def activation_bytes(config, batch_size: int, cells: int, grad_ckpt: bool, act_size: int) -> int:
    """Estimated bytes of the activations kept for the backward pass of one step.

    Per token and layer, a decoder layer keeps about 10 h + 4 I values (norm inputs and outputs, q/k/v,
    attention and projection outputs, the residual; the MLP's gate, up, activation and product) with
    sdpa (no L x L scores). With checkpointing only each layer's input (h) stays, plus one layer's full
    set during its recomputation. A sample is L = 2 cells + TEXT_TOKENS tokens (image cells, as many
    placeholders, text) in the language model and 4 cells patches in the vision tower; a packed row's
    attention mask adds (B L)^2 bytes and as many floats.
    """
    text = config.get_text_config()
    h, layers, inter = text.hidden_size, text.num_hidden_layers, text.intermediate_size
    depth, width, mlp = _vision_dims(config)
    tokens, patches = 2 * cells + TEXT_TOKENS, 4 * cells

    def stack(n_layers: int, d: int, ff: int, n: int) -> int:
        full = 10 * d + 4 * ff
        return n * (n_layers * d + full if grad_ckpt else n_layers * full)

    values = batch_size * (stack(layers, h, inter, tokens) + stack(depth, width, mlp, patches))
    mask = (batch_size * tokens) ** 2 * (1 + act_size)
    return values * act_size + mask


def _lora_trainable(model, lora) -> tuple[int, int]:
    """(adapter parameters, parameters of the modules_to_save) that `apply_lora(model, lora)` trains,
    counted on `model` as it is (the meta device will do)."""
    target = re.compile(rf"model\.language_model\..*\.({'|'.join(lora.target_modules)})$")
    adapters = saved = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and target.fullmatch(name):
            adapters += lora.r * (module.in_features + module.out_features)
        elif name.rsplit(".", 1)[-1] in lora.modules_to_save:
            saved += sum(p.numel() for p in module.parameters())
    return adapters, saved


def estimate_memory(model, settings: TrainSettings, batch_size: int, grad_ckpt: bool, cells: int) -> dict:
    """Bytes one configuration needs: weights, gradients, AdamW moments and activations (`model` may
    live on the meta device). Full fine-tune: gradients and two moments per parameter in its dtype.
    LoRA: the adapters in fp32 (peft's default next to bf16 weights) with their gradients and moments,
    and the modules_to_save copied with theirs."""
    from stamp.train.config import LoraConfig

    params = {id(p): p for p in model.parameters()}.values()
    weights = sum(p.numel() * p.element_size() for p in params)
    size = next(iter(params)).element_size()
    if settings.lora:
        adapters, saved = _lora_trainable(model, LoraConfig())
        trainable = adapters + saved
        extra_weights = adapters * 4 + saved * size
        grads_and_moments = 3 * (adapters * 4 + saved * size)
    else:
        trainable = sum(p.numel() for p in params)
        extra_weights, grads_and_moments = 0, 3 * weights
    act_size = 2 if settings.precision == "bf16" else 4
    activations = activation_bytes(model.config, batch_size, cells, grad_ckpt, act_size)
    total = weights + extra_weights + grads_and_moments + activations + OVERHEAD_BYTES
    return {
        "weights_bytes": weights,
        "trainable_params": trainable,
        "adapter_and_copy_bytes": extra_weights,
        "grads_and_adamw_bytes": grads_and_moments,
        "activation_bytes": activations,
        "overhead_bytes": OVERHEAD_BYTES,
        "total_bytes": total,
    }


def cells_for(s, side: int) -> int:
    """Merged 28x28 cells a processor of `ProcessorSettings` `s` gives a side x side image."""
    from stamp.processing import CELL, resized_size

    w, h = resized_size(side, side, s.min_pixels, s.max_pixels)
    return (w // CELL) * (h // CELL)


def check_train_memory(name: str, model, settings: TrainSettings, cells: int, device) -> dict:
    """Raise `PresetMemoryError` (one line) when the smallest requested configuration of `settings`
    exceeds the free memory of `device`; else return its estimate."""
    device = torch.device(device)
    est = estimate_memory(model, settings, min(settings.batch_sizes), any(settings.grad_ckpt), cells)
    free = presets.available_bytes(device)
    if free is not None and est["total_bytes"] > free:
        gib = {k: est[k] / 2**30 for k in est if k.endswith("_bytes")}
        raise PresetMemoryError(
            f"training {name} ({'LoRA' if settings.lora else 'full fine-tune'}, batch "
            f"{min(settings.batch_sizes)}, {cells} cells) needs about {gib['total_bytes']:.1f} GiB on "
            f"{device} ({gib['weights_bytes']:.1f} weights + {gib['grads_and_adamw_bytes']:.1f} gradients "
            f"and AdamW states + {gib['activation_bytes']:.1f} activations + {gib['overhead_bytes']:.0f} overhead) but {free / 2**30:.1f} GiB are free"
        )
    return {**est, "free_bytes": free}


def _batch_on(examples: list[dict], processor, planner, precision: str, device) -> dict:
    batch = processor.collate(examples)
    if precision == "bf16" and "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    plan = planner(batch)
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["plan"] = plan.to(device)
    return batch


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _time_steps(module, params: list, batch: dict, settings: TrainSettings, device: torch.device):
    """Warm-up steps, then timed ones, each with a fresh AdamW over `params` as the Trainer builds it.
    Returns (Timing with the first timed step's peak memory, bytes in use before it, losses)."""
    from stamp.train.config import OptimConfig

    optim = OptimConfig()
    optimizer = torch.optim.AdamW(
        params, lr=settings.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay
    )
    autocast = torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=settings.precision == "bf16"
    )
    losses: list[torch.Tensor] = []

    def step() -> None:
        with autocast:
            loss, _, _ = module(**batch)
            loss.backward()
        if optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    try:
        for _ in range(settings.warmup):
            step()
        synchronize(device)
        resident = resident_bytes(device)
        timing = measure(step, device=device, repeats=settings.steps, warmup=0, track_memory=True)
    finally:
        optimizer.zero_grad(set_to_none=True)
        optimizer.state.clear()
    return timing, resident, [float(v) for v in losses]


def run_train(model, processor, settings: TrainSettings, log=print) -> list[dict]:
    """One record per (gradient checkpointing, batch size): ms per step, samples/s, peak memory."""
    from stamp.train.build import apply_lora, set_gradient_checkpointing
    from stamp.train.config import LoraConfig, LossConfig
    from stamp.train.step import StampTrainingModule

    device = model.device
    planner = model.batch_planner()
    examples = [
        processor.encode_sample(s) for s in synthetic_samples(max(settings.batch_sizes), settings.image_side)
    ]
    loss_cfg = LossConfig()
    weights = {"text_weight": loss_cfg.text, "bce_weight": loss_cfg.bce, "dice_weight": loss_cfg.dice}
    mode = "lora" if settings.lora else "full"
    net = apply_lora(model, LoraConfig()) if settings.lora else model.requires_grad_(True)
    net.train()
    module = StampTrainingModule(net, weights)
    params = [p for p in net.parameters() if p.requires_grad]
    total_params = sum(p.numel() for p in {id(p): p for p in net.parameters()}.values())
    records = []
    try:
        for ckpt in settings.grad_ckpt:
            set_gradient_checkpointing(model, ckpt)
            for bsz in settings.batch_sizes:
                batch = _batch_on(examples[:bsz], processor, planner, settings.precision, device)
                cells = int(batch["image_grid_thw"].prod(-1).sum()) // (model.merge_size**2 * bsz)
                est = estimate_memory(model, settings, bsz, ckpt, cells)
                rec = {
                    "mode": mode,
                    "grad_ckpt": ckpt,
                    "batch_size": bsz,
                    "image_side": settings.image_side,
                    "cells": cells,
                    "tokens_per_sample": int(batch["attention_mask"].sum()) // bsz,
                    "precision": settings.precision,
                    "weight_dtype": str(next(iter(params)).dtype).removeprefix("torch."),
                    "trainable_params": sum(p.numel() for p in params),
                    "total_params": total_params,
                    "estimate_bytes": est,
                }
                free = presets.available_bytes(device)
                need = est["total_bytes"] - est["weights_bytes"]
                if device.type == "cpu" and free is not None and need > free:
                    rec["skipped"] = (
                        f"estimate {need / 2**30:.1f} GiB above the weights > {free / 2**30:.1f} GiB free"
                    )
                    log(f"[train] {mode} ckpt {'on' if ckpt else 'off'} B={bsz}: skipped ({rec['skipped']})")
                    records.append(rec)
                    continue
                try:
                    timing, resident, losses = _time_steps(module, params, batch, settings, device)
                except torch.OutOfMemoryError as err:
                    rec["oom"] = str(err).splitlines()[0]
                    log(f"[train] {mode} ckpt {'on' if ckpt else 'off'} B={bsz}: out of memory")
                    records.append(rec)
                    continue
                finally:
                    _free(device)
                peak = timing.peak_mem
                resident_mb = None if resident is None else resident / 2**20
                rec.update(
                    {
                        "steps": timing.repeats,
                        "warmup": settings.warmup,
                        "ms_per_step": timing.median_ms,
                        "min_ms_per_step": timing.min_ms,
                        "max_ms_per_step": timing.max_ms,
                        "samples_per_s": bsz * 1e3 / timing.median_ms,
                        "peak_mem_mb": peak.peak_mb,
                        "resident_mb": resident_mb,
                        "peak_total_mb": None
                        if None in (peak.peak_mb, resident_mb)
                        else peak.peak_mb + resident_mb,
                        "peak_mem_method": peak.method,
                        "loss": statistics.median(losses),
                        "timings": timing.to_dict(),
                    }
                )
                records.append(rec)
                log(
                    f"[train] {mode} ckpt {'on' if ckpt else 'off'} B={bsz} ({cells} cells): "
                    f"{timing.median_ms:.1f} ms/step, {rec['samples_per_s']:.2f} samples/s, "
                    f"peak {peak.peak_mb or 0:.0f} MB above {resident_mb or 0:.0f} MB"
                )
    finally:
        set_gradient_checkpointing(model, False)
        if settings.lora:
            net.unload()
        model.requires_grad_(False).eval()
        _free(device)
    return records
