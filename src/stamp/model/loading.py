"""Saving and loading STAMP checkpoints, strictly, from local directories only.

Accepted layouts of `load_stamp_model(path)`:
  1. a stamp-seg checkpoint (config.json with a "stamp" section, model.safetensors incl. `classifier.*`,
     tokenizer, stamp_processor.json);
  2. the authors' full checkpoint (a Qwen2-VL directory whose tokenizer has `<|seg|>`/`<|mask|>` and
     whose weights include `classifier.*`; legacy `model.layers.*`/`visual.*` or new
     `model.language_model.*`/`model.visual.*` key prefixes). Their checkpoints were trained with 1-D
     placeholder positions, so `position_mode` defaults to "text" for this layout;
  3. a stock Qwen2-VL / Qwen2.5-VL directory: STAMP's tokens are added, embeddings resized (mean
     initialised), and a new classifier initialised -- a starting point for training;
  4. a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors) on a base model
     of layout 3, given by `base_model=` or the adapter's `base_model_name_or_path`; merged on load.
     peft writes, beside each canonical `modules_to_save` tensor (`...embed_tokens.weight`), copies
     named `...modules_to_save.weight` (the same trained tensor) and `...original_module.weight` (the
     base model's inactive copy) when the embeddings were resized. peft loads the canonical tensor into
     the active copy, so that one is used; a `modules_to_save` copy that differs from it is an error,
     and an `original_module` copy, which never reaches the outputs, only has to have its shape.
The loaded model records its source as `model.checkpoint`; the processor (tokenizer, image sizing) is
read from there by the processor layer (`StampProcessor.for_model`), not here.
Missing or unexpected weights are an error, never a warning. Nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from stamp.faults import WriteError, describe, is_fault
from stamp.filemodes import new_dir_mode
from stamp.model.settings import StampSettings
from stamp.model.tokens import add_stamp_tokens


class StampModelError(ValueError):
    """A model directory that cannot be loaded (missing, incomplete, incompatible)."""


CLASSIFIER_KEYS = {"classifier.weight", "classifier.bias"}
# Authors' / older transformers key prefixes -> the current module names (regex -> replacement).
LEGACY_KEY_MAPPING = {
    r"^visual": "model.visual",
    r"^model(?!\.(language_model|visual))": "model.language_model",
}
_LEGACY_RENAMES = [(re.compile(k), v) for k, v in LEGACY_KEY_MAPPING.items()]


def _checkpoint_keys(path: Path) -> set[str]:
    """Every tensor name in the folder's safetensors files; StampModelError naming a damaged file (a
    truncated copy, a failed download) before anything is loaded."""
    keys: set[str] = set()
    for f in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as fh:
                keys.update(fh.keys())
        except Exception as e:  # safetensors raises its own error type for every kind of damage
            raise StampModelError(f"{f}: damaged or incomplete weights file ({_first_line(e)})") from None
    return keys


_STORED_SIZES = {
    "F64": 8,
    "I64": 8,
    "F32": 4,
    "I32": 4,
    "BF16": 2,
    "F16": 2,
    "I16": 2,
    "U8": 1,
    "I8": 1,
    "BOOL": 1,
}


def weight_bytes(path: Path, dtype: torch.dtype | None = None) -> int:
    """Bytes the folder's weights take in memory as `dtype` (None: as stored), read from the
    safetensors headers alone."""
    total = 0
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():
                piece = fh.get_slice(key)
                numel = 1
                for n in piece.get_shape():
                    numel *= n
                size = (
                    torch.empty((), dtype=dtype).element_size()
                    if dtype
                    else _STORED_SIZES.get(piece.get_dtype(), 4)
                )
                total += numel * size
    return total


def available_bytes(device: torch.device) -> int | None:
    """Free memory of `device`: CUDA's free memory, or the CPU's MemAvailable (None if unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(path: Path, dtype: torch.dtype | None, devices) -> None:
    """StampModelError (one line) when the folder's weights, as `dtype`, need more memory than one of
    `devices` has free: said before anything is loaded, rather than the process being killed."""
    need = weight_bytes(path, dtype)
    for device in devices:
        free = available_bytes(torch.device(device))
        if free is not None and need > free:
            what = str(dtype).removeprefix("torch.") if dtype else "their stored dtype"
            raise StampModelError(
                f"{path}: the weights need about {need / 2**30:.1f} GiB in {what} but {device} has "
                f"{free / 2**30:.1f} GiB free (a smaller dtype: dtype= / --dtype bfloat16; or another device)"
            )


def read_json(file: Path) -> dict:
    """A model folder's JSON file as a dict; StampModelError naming the file when it is unreadable or
    not a JSON object."""
    try:
        data = json.loads(Path(file).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise StampModelError(f"{file}: not a valid JSON file ({_first_line(e)})") from None
    if not isinstance(data, dict):
        raise StampModelError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def load_tokenizer(folder: Path):
    """The folder's tokenizer; StampModelError (one line) when it has none or it cannot be read."""
    from transformers import AutoTokenizer

    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise StampModelError(
            f"{folder}: no tokenizer (tokenizer.json / tokenizer_config.json) in the folder"
        )
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # transformers / tokenizers raise many types for a damaged file
        raise StampModelError(f"{folder}: the tokenizer cannot be read ({_first_line(e)})") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in table:
        raise StampModelError(f"unknown dtype {dtype!r}; use one of {sorted(table)}")
    return table[dtype]


SHIPPED_MODELS_DIR = Path(__file__).resolve().parents[1] / "assets"
"""Models shipped inside the package, each a checkpoint folder named as the model (`tiny-synth`)."""


def shipped_model_names() -> list[str]:
    """The names `from_pretrained` accepts besides local folders: the package's shipped checkpoints."""
    if not SHIPPED_MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_MODELS_DIR.iterdir() if (p / "config.json").is_file())


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """The folder of `name_or_path`: a local model folder, or the name of a shipped model (a local folder
    of that name wins, as in transformers). StampModelError (one line) otherwise; nothing is downloaded."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    text = str(name_or_path)
    if text in shipped_model_names():
        return SHIPPED_MODELS_DIR / text
    shipped = ", ".join(shipped_model_names()) or "none"
    raise StampModelError(
        hub_id_error(text)
        or f"model directory not found: {text} (a local folder, or a shipped model: {shipped})"
    )


def hub_id_error(path) -> str | None:
    """The error for a model path that names no local folder and may be a Hugging Face hub id
    (`Qwen/Qwen2-VL-2B-Instruct`: ORG/NAME), else None. Models are local folders: nothing is downloaded."""
    text = str(path)
    if Path(text).exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        return None
    org, name = text.split("/")
    if not re.fullmatch(r"[\w.-]+", org) or not re.fullmatch(r"[\w.-]+", name):
        return None
    return (
        f"model directory not found: {text} (if it is a Hugging Face hub id: models are local folders, "
        f"nothing is downloaded; get it with `huggingface-cli download {text} --local-dir models/{name}` "
        f"and pass models/{name})"
    )


@dataclass(frozen=True)
class Checkpoint:
    """Where a loaded model came from, recorded as `model.checkpoint`: what its processor is read from
    (`StampProcessor.for_model`). layout: "stamp" (a stamp-seg checkpoint), "authors" (the authors' full
    checkpoint), "stock" (a plain Qwen2-VL folder), "adapter" (a LoRA adapter on `base`)."""

    path: Path
    layout: str
    base: Path | None = None


def checkpoint_of(name_or_path: str | os.PathLike, base_model: str | os.PathLike | None = None) -> Checkpoint:
    """The `Checkpoint` a folder (or shipped model's name) would load as, read from its files alone: no
    weights are loaded (what the processor is read from: `StampProcessor.from_pretrained`)."""
    path = resolve_model_path(name_or_path)
    if (path / "adapter_config.json").is_file():
        named = read_json(path / "adapter_config.json").get("base_model_name_or_path")
        base = base_model or named
        return Checkpoint(path, "adapter", Path(base) if base else None)
    config = read_json(path / "config.json")
    if "stamp" in config:
        return Checkpoint(path, "stamp")
    return Checkpoint(path, "authors" if CLASSIFIER_KEYS <= _checkpoint_keys(path) else "stock")


def _placement(
    dtype, torch_dtype, device, device_map
) -> tuple[torch.dtype | str | None, str | torch.device | None, str | dict | None]:
    """(dtype, device, device_map) from the arguments of `load_stamp_model`: `torch_dtype` is
    transformers' older spelling of `dtype` (StampModelError when both are given and differ); `device`
    and `device_map` exclude each other; a device map needs accelerate."""
    if torch_dtype is not None:
        if dtype is not None and _dtype(dtype) != _dtype(torch_dtype):
            raise StampModelError(
                f"dtype={dtype!r} and torch_dtype={torch_dtype!r} differ: give one (dtype is the name to use)"
            )
        dtype = torch_dtype
    if device_map is None:
        return dtype, "cpu" if device is None else device, None
    if device is not None:
        raise StampModelError(
            f"device={device!r} and device_map={device_map!r}: give one (device_map places the weights)"
        )
    if isinstance(device_map, torch.device):
        device_map = str(device_map)
    if not isinstance(device_map, (str, dict)):
        raise StampModelError(f"device_map must be a string or a dict, got {type(device_map).__name__}")
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise StampModelError(
            f"device_map={device_map!r} needs accelerate: pip install 'stamp-seg[train]' (or accelerate)"
        ) from None
    return dtype, None, device_map


def load_stamp_model(
    path: str | os.PathLike,  # a folder, or a shipped model's name
    model_classes: dict,
    *,
    dtype: torch.dtype | str | None = None,
    torch_dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    attn_implementation: str = "sdpa",
    base_model: str | os.PathLike | None = None,
    position_mode: str | None = None,
    attention_mode: str | None = None,
    mask_embedding: str | None = None,
):
    """Load any of the layouts in the module docstring from a folder or a shipped model's name
    (`resolve_model_path`); returns a StampModel (eval mode) whose `checkpoint` says where it came from.
    `model_classes`: model_type -> StampModel class. `dtype` None: the checkpoint's
    `StampSettings.default_dtype`, else as saved; `torch_dtype` is accepted as transformers' older
    name for it.

    Placement: `device` (default "cpu") moves the whole model there; or `device_map` (needs accelerate)
    as transformers takes it -- "auto" splits a model too large for one GPU over the GPUs there are (then
    the CPU), a device name puts it all there, a dict maps module names to devices. Not both.

    The three `*_mode` arguments override the saved STAMP settings (e.g. for ablations).
    """
    dtype, device, device_map = _placement(dtype, torch_dtype, device, device_map)
    path = resolve_model_path(path)
    if (path / "adapter_config.json").is_file():
        model = _load_adapter(
            path,
            base_model,
            model_classes,
            dtype=dtype,
            device="cpu" if device_map is not None else device,
            attn_implementation=attn_implementation,
        )
        return _dispatch(model, device_map) if device_map is not None else model
    if not (path / "config.json").is_file():
        raise StampModelError(f"{path} has no config.json: not a model directory")
    from transformers import AutoConfig

    read_json(path / "config.json")  # a damaged file is named before transformers reads it
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    if config.model_type not in model_classes:
        raise StampModelError(
            f"{path}: model type {config.model_type!r} is not supported; use one of {sorted(model_classes)}"
        )
    keys = _checkpoint_keys(path)
    if not keys:
        raise StampModelError(f"{path} has no *.safetensors weights")
    has_head = CLASSIFIER_KEYS <= keys
    layout = "stamp" if hasattr(config, "stamp") else "authors" if has_head else "stock"
    tokenizer = load_tokenizer(path)
    if not hasattr(config, "stamp"):
        seg_id, mask_id = add_stamp_tokens(tokenizer)
        config.stamp = StampSettings(seg_id, mask_id, position_mode="text" if has_head else "grid").to_dict()
    overrides = {
        "position_mode": position_mode,
        "attention_mode": attention_mode,
        "mask_embedding": mask_embedding,
    }
    config.stamp = _without_mask_decoder(path, config.stamp)
    settings = StampSettings.from_dict({**config.stamp, **{k: v for k, v in overrides.items() if v}})
    config.stamp = settings.to_dict()
    load_dtype = _dtype(dtype if dtype is not None else settings.default_dtype)
    if device_map is None:  # loaded on the CPU, then moved: both must hold the weights
        check_fits(path, load_dtype, {"cpu", str(torch.device(device or "cpu"))})
    model, info = model_classes[config.model_type].from_pretrained_weights(
        str(path),
        config=config,
        dtype=load_dtype,
        attn_implementation=attn_implementation,
        local_files_only=True,
        output_loading_info=True,
        key_mapping=LEGACY_KEY_MAPPING,
        **({} if device_map is None else {"device_map": device_map}),
    )
    _check_loading_info(
        path, info, new_head_allowed=not has_head, tied=bool(getattr(config, "tie_word_embeddings", False))
    )
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.checkpoint = Checkpoint(path, layout)
    return (model if device_map is not None else model.to(device)).eval()


def _dispatch(model, device_map: str | dict):
    """`model` (on the CPU) placed by accelerate as transformers' `from_pretrained(device_map=...)`
    places a model it loads: "auto" (also "balanced", ...) over the GPUs, then the CPU."""
    from accelerate import dispatch_model, infer_auto_device_map

    if isinstance(device_map, str) and device_map not in ("auto", "balanced", "balanced_low_0", "sequential"):
        return model.to(device_map).eval()
    if isinstance(device_map, str):
        device_map = infer_auto_device_map(model, no_split_module_classes=model._no_split_modules)
    return dispatch_model(model, device_map=device_map).eval()


def _without_mask_decoder(path: Path, section: dict) -> dict:
    """A config's "stamp" section without the keys older checkpoints wrote for pluggable mask decoders
    ("mask_decoder", "label_token_ids"). A checkpoint whose masks were decoded otherwise than by STAMP's
    one pass (e.g. the next-token baseline of `experiments/`) is refused, in one line naming the script
    that uses it."""
    section = dict(section)
    decoder = section.pop("mask_decoder", "placeholders")
    section.pop("label_token_ids", None)
    if decoder != "placeholders":
        raise StampModelError(
            f"{path}: its masks are decoded by {decoder!r}, which is not STAMP's mask pass: use "
            f"`python experiments/{decoder}.py COMMAND ...` (train, eval) with this model"
        )
    return section


def _check_loading_info(path: Path, info: dict, *, new_head_allowed: bool, tied: bool) -> None:
    missing = set(info.get("missing_keys", []))
    unexpected = set(info.get("unexpected_keys", []))
    if new_head_allowed:
        missing -= CLASSIFIER_KEYS
    if tied:
        missing.discard("lm_head.weight")
    mismatched = info.get("mismatched_keys", [])
    if missing or unexpected or mismatched:
        parts = []
        for name, items in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)):
            if items:
                shown = sorted(str(i) for i in items)
                parts.append(f"{len(shown)} {name} (e.g. {', '.join(shown[:3])})")
        raise StampModelError(f"{path}: weights do not match the model: {'; '.join(parts)}")


def _load_adapter(path: Path, base_model, model_classes: dict, *, dtype, device, attn_implementation):
    """Layout 4: LoRA adapter (the authors' 7B release) on a stock base model, merged on load."""
    from safetensors.torch import load_file

    try:
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    except ImportError:
        raise StampModelError("loading a LoRA adapter needs peft: pip install 'stamp-seg[train]'") from None
    cfg = read_json(path / "adapter_config.json")
    base = Path(base_model or cfg.get("base_model_name_or_path") or "")
    if not base.is_dir():
        named = cfg.get("base_model_name_or_path")
        hint = (
            f" (the adapter names {named!r}: models are local folders, nothing is downloaded)"
            if named
            else ""
        )
        raise StampModelError(
            f"adapter {path}: base model directory {str(base) or '(none)'} not found{hint}; "
            "pass base_model= (CLI: --base-model) with a local copy of the base model"
        )
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        raise StampModelError(f"adapter {path}: adapter_model.safetensors not found")
    model = load_stamp_model(
        base, model_classes, dtype=dtype, device="cpu", attn_implementation=attn_implementation
    )
    if (path / "tokenizer_config.json").is_file():  # the adapter's tokenizer fixes the ids of the new tokens
        tok = load_tokenizer(path)
        seg_id, mask_id = add_stamp_tokens(tok)
        model.stamp = StampSettings(seg_id, mask_id, position_mode="text")
        model.config.stamp = model.stamp.to_dict()
    state = _drop_peft_copies(path, {_rename_adapter_key(k): v for k, v in load_file(str(weights)).items()})
    rows = next((v.shape[0] for k, v in state.items() if k.endswith("embed_tokens.weight")), None)
    if rows and rows != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(rows, mean_resizing=False)
    lora_keys = {k for k in cfg if k in LoraConfig.__dataclass_fields__} - {
        "peft_type",
        "task_type",
        "auto_mapping",
        "revision",
    }
    peft_model = get_peft_model(model, LoraConfig(**{k: cfg[k] for k in lora_keys}))
    result = set_peft_model_state_dict(peft_model, state)
    if result.unexpected_keys:
        raise StampModelError(
            f"adapter {path}: {len(result.unexpected_keys)} unexpected weights (e.g. {result.unexpected_keys[:3]})"
        )
    expected = {k for k in peft_model.state_dict() if "lora_" in k or "modules_to_save" in k}
    missing = [k for k in result.missing_keys if k in expected]
    if missing:
        raise StampModelError(f"adapter {path}: {len(missing)} adapter weights missing (e.g. {missing[:3]})")
    merged = peft_model.merge_and_unload()
    merged.checkpoint = Checkpoint(path, "adapter", base)
    return merged.to(device).eval()


def _drop_peft_copies(path: Path, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove peft's `modules_to_save` / `original_module` copies of canonical tensors (see the module
    docstring); StampModelError when a copy disagrees with the tensor peft actually loads."""
    kept = {}
    for key, value in state.items():
        for part in (".modules_to_save.", ".original_module."):
            if part in key:
                canonical = key.replace(part, ".")
                break
        else:
            kept[key] = value
            continue
        if canonical not in state:
            kept[key] = value  # not a copy: left for the strict key check
            continue
        if part == ".original_module." and value.shape != state[canonical].shape:
            raise StampModelError(
                f"adapter {path}: {key} has shape {tuple(value.shape)}, the canonical tensor "
                f"{tuple(state[canonical].shape)}: the file is inconsistent"
            )
        if part == ".modules_to_save." and not torch.equal(value, state[canonical]):
            raise StampModelError(
                f"adapter {path}: {key} and {canonical} disagree; peft would load {canonical}, "
                "so the file is inconsistent"
            )
    return kept


def _rename_adapter_key(key: str) -> str:
    prefix = "base_model.model."
    if not key.startswith(prefix):
        return key
    inner = key[len(prefix) :]
    for pattern, repl in _LEGACY_RENAMES:
        inner = pattern.sub(repl, inner)
    return prefix + inner


def save_stamp_model(
    model, path: str | os.PathLike, processor, *, overwrite: bool = False, state_dict: dict | None = None
) -> None:
    """Write weights, config and `processor` (anything with `save_pretrained(folder)`: its tokenizer
    and settings) atomically (temp dir, then rename).

    Refuses to replace an existing non-empty directory unless `overwrite=True`.
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise StampModelError(f"{path} exists and is not empty; pass overwrite=True to replace it")
    existed = path.exists()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        os.chmod(tmp, new_dir_mode())  # mkdtemp makes 0700; the saved model should look like any folder
        model.config.stamp = model.stamp.to_dict()
        model.save_pretrained(str(tmp), safe_serialization=True, state_dict=state_dict)
        processor.save_pretrained(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if is_fault(err):
            kept = "the earlier model there is untouched" if existed else "nothing was written"
            raise WriteError(f"{describe(err)} while saving the model to {path}; {kept}", err) from None
        raise
