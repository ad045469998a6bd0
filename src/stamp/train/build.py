"""Build the model a training config asks for (from scratch, pretrained, LoRA; or from a checkpoint)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from stamp.processing import CELL, ProcessorSettings
from stamp.train.config import LoraConfig, TrainConfig


def build_model(cfg: TrainConfig, weights_from: Path | None = None):
    """(the StampModel to train, its processor). `weights_from`: a checkpoint's model folder to resume
    from."""
    from stamp.processing import load_model_and_processor

    m = cfg.model
    modes = dict(
        position_mode=m.position_mode, attention_mode=m.attention_mode, mask_embedding=m.mask_embedding
    )
    if weights_from is not None and m.lora is None:
        model, processor = load_model_and_processor(weights_from, attn_implementation=m.attn_implementation)
        # the config, not the checkpoint, decides the data side of training (e.g. a resumed run with
        # soft targets; the image sizing)
        processor.settings.target_threshold = cfg.loss.target_threshold
        _set_cells(processor, m)
    elif m.init == "scratch":
        from stamp.model.build import Architecture
        from stamp.model.build import build_model as build_network
        from stamp.processing import StampProcessor
        from stamp.train.tokenizer import SHIPPED_TOKENIZER, load_synth_tokenizer

        settings = ProcessorSettings(
            min_pixels=(m.min_cells or SCRATCH_CELLS[0]) * CELL * CELL,
            max_pixels=(m.max_cells or SCRATCH_CELLS[1]) * CELL * CELL,
            system_prompt=m.system_prompt,
            target_threshold=cfg.loss.target_threshold,
        )
        tokenizer = load_synth_tokenizer(m.tokenizer or SHIPPED_TOKENIZER)
        arch = Architecture(**{f.name: getattr(m, f.name) for f in fields(Architecture)})
        model = build_network(
            tokenizer, arch, seed=cfg.run.seed, attn_implementation=m.attn_implementation, **modes
        )
        processor = StampProcessor(tokenizer, settings)
    else:
        model, processor = load_model_and_processor(
            m.path, attn_implementation=m.attn_implementation, **modes
        )
        processor.settings.target_threshold = cfg.loss.target_threshold
        _set_cells(processor, m)
    if m.freeze_vision:
        model.model.visual.requires_grad_(False)
    if m.gradient_checkpointing:
        set_gradient_checkpointing(model, True)
    if m.lora is not None:
        model = apply_lora(model, m.lora, base_path=m.path, weights_from=weights_from)
    return model.train(), processor


def set_gradient_checkpointing(model, on: bool) -> None:
    """Recompute each layer's activations in the backward pass instead of keeping them (non-reentrant
    checkpoints; effective in training mode), or stop doing so."""
    if on:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # the name transformers keeps
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    elif hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()


SCRATCH_CELLS = (64, 256)
"""Image size range, in 28x28 cells, of a model trained from scratch when the config sets none."""


def _set_cells(processor, m) -> None:
    """Resize training images of a loaded model to the config's cell range: a scratch model's resumed
    checkpoint always (defaults SCRATCH_CELLS); a pretrained one only where the config sets a bound
    (else it keeps its own). A fresh scratch model gets the range in its ProcessorSettings."""
    if m.init != "scratch" and m.min_cells is None and m.max_cells is None:
        return
    s = processor.settings
    fallback = SCRATCH_CELLS if m.init == "scratch" else (s.min_pixels // CELL**2, s.max_pixels // CELL**2)
    lo = m.min_cells if m.min_cells is not None else fallback[0]
    hi = m.max_cells if m.max_cells is not None else fallback[1]
    if lo > hi:
        raise ValueError(
            f"model.min_cells..max_cells gives {lo}..{hi} cells with the checkpoint's range; set both"
        )
    processor.set_cell_range(lo, hi)


def apply_lora(model, lc: LoraConfig, base_path: str | None = None, weights_from: Path | None = None):
    """`model` wrapped by peft with the adapters `lc` asks for, inside the language model only; the
    `modules_to_save` train in full (copies of theirs). `weights_from`: a checkpoint's model folder
    holding `adapter_model.safetensors`. The wrapper keeps `.stamp_forward`."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    peft_cfg = PeftLoraConfig(
        r=lc.r,
        lora_alpha=lc.alpha,
        lora_dropout=lc.dropout,
        use_rslora=lc.rslora,
        target_modules=list(lc.target_modules),
        modules_to_save=list(lc.modules_to_save),
        base_model_name_or_path=base_path,
    )
    # LoRA only inside the language model: the vision tower's own linear layers keep their weights
    peft_cfg.target_modules = rf"model\.language_model\..*\.({'|'.join(lc.target_modules)})"
    pm = get_peft_model(model, peft_cfg)
    if weights_from is not None:
        set_peft_model_state_dict(pm, load_file(str(Path(weights_from) / "adapter_model.safetensors")))
    pm.stamp_forward = pm.base_model.model.stamp_forward
    return pm
