"""`StampProcessor`: images -> Qwen2-VL pixel tensors, conversations -> token ids, batches -> tensors.

Built on a tokenizer and one of two image resizes (transformers' `Qwen2VLProcessor` needs torchvision
for its video part, which this project does not depend on), chosen by `ProcessorSettings.resize`:

    "pil"   `Qwen2VLImageProcessorPil`: PIL bicubic resize (stamp-seg checkpoints saved before the
            field existed, and the bundled model);
    "fast"  `stamp.imaging.resize`: the resize of transformers' fast (torchvision) processor, bicubic with
            antialias on uint8 tensors, equal to it bit for bit without torchvision (the authors'
            checkpoints: their environment loads the fast processor).

Wherever an image is resized the two differ by a uint8 level or so on a small share of the values
(more on hard edges and noise), enough to move mask logits slightly. The chat format is Qwen2-VL's:

    <|im_start|>system\n{system}<|im_end|>\n                        (omitted when system is None)
    <|im_start|>user\n<|vision_start|><|image_pad|>*N<|vision_end|>{prompt}<|im_end|>\n
    <|im_start|>assistant\n{answer}<|im_end|>\n

with N = gh * gw merged cells. Labels cover the assistant answers and their `<|im_end|>`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn.utils.rnn import pad_sequence
from transformers import Qwen2VLImageProcessorPil

from stamp.data.sample import IGNORE_INDEX, StampSample, Turn
from stamp.imaging import DEFAULT_MAX_IMAGE_PIXELS, ImageLike, load_image
from stamp.imaging.resize import MERGE, PATCH, pad_to_aspect, qwen2vl_fast_pixels
from stamp.model.loading import load_tokenizer, read_json
from stamp.model.losses import patch_targets
from stamp.model.tokens import (
    IM_END,
    IM_START,
    IMAGE_PAD,
    MASK_TOKEN,
    SEG_TOKEN,
    VISION_END,
    VISION_START,
    add_stamp_tokens,
    token_id,
)

PROCESSOR_FILE = "stamp_processor.json"
DEFAULT_SYSTEM = "You are a helpful assistant."
CELL = PATCH * MERGE  # pixels per merged cell (one LM token): 28
RESIZE_MODES = ("pil", "fast")


@dataclass
class ProcessorSettings:
    """Image sizing and prompt format, saved as `stamp_processor.json` next to the weights."""

    min_pixels: int = 1024 * CELL * CELL
    """Smallest image area after resizing (the paper: 1024 cells)."""
    max_pixels: int = 1280 * CELL * CELL
    """Largest image area after resizing (the paper: 1280 cells)."""
    system_prompt: str | None = DEFAULT_SYSTEM
    """System message of the chat template; None omits the system turn."""
    target_threshold: float | None = 0.5
    """Cells whose foreground area fraction is >= this are positive targets; None keeps soft targets."""
    resize: str = "pil"
    """How images are resized: "pil" (PIL bicubic; files saved before this field existed load as "pil")
    or "fast" (as transformers' fast image processor, see `stamp.imaging.resize`)."""

    @classmethod
    def authors(cls) -> ProcessorSettings:
        """The sizing the authors train and evaluate their checkpoints with (1024..1280 cells), resized
        as in their environment (the fast processor)."""
        return cls(min_pixels=1024 * CELL * CELL, max_pixels=1280 * CELL * CELL, resize="fast")

    def __post_init__(self) -> None:
        if not (0 < self.min_pixels <= self.max_pixels):
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        if self.target_threshold is not None and not (0.0 < self.target_threshold <= 1.0):
            raise ValueError(f"target_threshold must be in (0, 1] or None, got {self.target_threshold}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")


@dataclass
class EncodedImage:
    """An image ready for the vision tower.

    pixel_values: (gh*2 * gw*2, 3*2*14*14) float patches; grid_thw: (3,) long = (1, 2*gh, 2*gw);
    size: original (width, height).
    """

    pixel_values: torch.Tensor
    grid_thw: torch.Tensor
    size: tuple[int, int]
    image: Image.Image | None = field(default=None, repr=False)
    canvas: Image.Image | None = field(default=None, repr=False)
    """The image the model saw when it is not `image` itself: `image` padded to the backbone's aspect
    ratio limit (`stamp.imaging.resize.pad_to_aspect`), `image` its top-left corner; None otherwise."""

    @property
    def canvas_size(self) -> tuple[int, int]:
        """(width, height) of the image the model saw: masks are upsampled to it, then cropped to `size`."""
        return self.canvas.size if self.canvas is not None else self.size

    @property
    def grid_hw(self) -> tuple[int, int]:
        """(gh, gw): merged cells, i.e. placeholders per `<|seg|>` = gh * gw."""
        return int(self.grid_thw[1]) // MERGE, int(self.grid_thw[2]) // MERGE

    @property
    def num_cells(self) -> int:
        gh, gw = self.grid_hw
        return gh * gw


class StampProcessor:
    """Turns images and conversations into model inputs (see module docstring for the format)."""

    def __init__(self, tokenizer, settings: ProcessorSettings | None = None):
        self.tokenizer = tokenizer
        self.settings = settings or ProcessorSettings()
        self.image_processor = _pil_image_processor(self.settings)
        self.image_token_id = token_id(tokenizer, IMAGE_PAD)
        self.vision_start_id = token_id(tokenizer, VISION_START)
        self.vision_end_id = token_id(tokenizer, VISION_END)
        self.im_end_id = token_id(tokenizer, IM_END)
        self.seg_token_id = token_id(tokenizer, SEG_TOKEN)
        self.mask_token_id = token_id(tokenizer, MASK_TOKEN)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.im_end_id
        self._reserved = reserved_tokens(tokenizer)

    def set_cell_range(self, min_cells: int, max_cells: int) -> None:
        """Deploy at another resolution: images resized to `min_cells`..`max_cells` merged 28x28 cells."""
        if not 0 < min_cells <= max_cells:
            raise ValueError(f"need 0 < min cells <= max cells, got {min_cells}, {max_cells}")
        self.set_pixel_range(min_cells * CELL * CELL, max_cells * CELL * CELL)

    def set_pixel_range(self, min_pixels: int, max_pixels: int) -> None:
        """Change the dynamic-resolution bounds (e.g. to deploy a model at another resolution)."""
        self.settings = replace(self.settings, min_pixels=min_pixels, max_pixels=max_pixels)
        self.image_processor = _pil_image_processor(self.settings)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | Path) -> None:
        self.tokenizer.save_pretrained(str(path))
        (Path(path) / PROCESSOR_FILE).write_text(json.dumps(asdict(self.settings), indent=2) + "\n")

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, *, base_model: str | Path | None = None
    ) -> StampProcessor:
        """The processor of a model folder or shipped model's name, of any layout
        `StampModel.from_pretrained` loads (read beside the model, as in transformers):

            model = StampModel.from_pretrained("tiny-synth")
            processor = StampProcessor.from_pretrained("tiny-synth")
        """
        from stamp.model.loading import checkpoint_of

        ckpt = checkpoint_of(name_or_path, base_model)
        return cls.for_checkpoint(ckpt.path, ckpt.layout, ckpt.base)

    @classmethod
    def _from_folder(cls, path: str | Path, tokenizer=None) -> StampProcessor:
        """The processor files of `path` (stamp_processor.json, else a preprocessor_config.json) around
        `tokenizer` (default: the folder's)."""
        path = Path(path)
        tokenizer = tokenizer or load_tokenizer(path)
        settings = ProcessorSettings()
        if (path / PROCESSOR_FILE).is_file():
            settings = ProcessorSettings(**read_json(path / PROCESSOR_FILE))
        elif (path / "preprocessor_config.json").is_file():  # a stock Qwen2-VL or the authors' directory
            pre = read_json(path / "preprocessor_config.json")
            settings = settings_from_preprocessor_config(pre, settings)
        return cls(tokenizer, settings)

    @classmethod
    def for_model(cls, model) -> StampProcessor:
        """The processor of a model loaded by `StampModel.from_pretrained`, read from the folder its
        `checkpoint` names (see `for_checkpoint`)."""
        ckpt = getattr(model, "checkpoint", None)
        if ckpt is None:
            raise ValueError("the model was not loaded from a folder: pass its processor explicitly")
        return cls.for_checkpoint(ckpt.path, ckpt.layout, ckpt.base)

    @classmethod
    def for_checkpoint(cls, path: str | Path, layout: str = "stamp", base: str | Path | None = None):
        """The processor of a checkpoint folder of `layout` (`stamp.model.loading.Checkpoint`).

        Tokenizer: the folder's (an adapter without one: its base's), with `<|seg|>` / `<|mask|>` added
        where missing, as loading adds them. Image sizing and resize: the folder's own processor files;
        else, for an adapter, a stamp-seg base's settings; else, for the authors' checkpoints, their
        1024..1280 cells and fast resize; else the defaults.
        """
        path = Path(path)
        source = path if (path / "tokenizer_config.json").is_file() or base is None else Path(base)
        tokenizer = load_tokenizer(source)
        add_stamp_tokens(tokenizer)
        if has_processor_files(path):
            return cls._from_folder(path, tokenizer)
        if layout == "adapter" and base is not None and (Path(base) / PROCESSOR_FILE).is_file():
            return cls._from_folder(base, tokenizer)
        if layout in ("authors", "adapter"):
            return cls(tokenizer, ProcessorSettings.authors())
        return cls(tokenizer, ProcessorSettings())

    # ------------------------------------------------------------------ images
    def encode_image(
        self, image: ImageLike, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    ) -> EncodedImage:
        """Load (any mode, EXIF-rotated) and resize dynamically within [min_pixels, max_pixels]. An image
        more elongated than the backbone takes (long / short side over 200, e.g. 416 x 1) is first padded
        to that ratio (`pad_to_aspect`, kept as `canvas`); its masks are cropped back to its size.
        `ImageTooLargeError` for an image of more than `max_image_pixels` pixels (a file: before decoding)."""
        pil = load_image(image, max_image_pixels)
        seen = pad_to_aspect(pil)
        if self.settings.resize == "fast":
            pixel_values, grid_thw = qwen2vl_fast_pixels(
                seen, self.settings.min_pixels, self.settings.max_pixels
            )
        else:
            out = self.image_processor(images=[seen], return_tensors="pt")
            pixel_values, grid_thw = out["pixel_values"], out["image_grid_thw"]
        canvas = None if seen is pil else seen
        return EncodedImage(pixel_values, grid_thw[0].long(), pil.size, pil, canvas)

    # ------------------------------------------------------------------ text
    def _text_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def check_user_text(self, text: str) -> None:
        """User text must not smuggle in control tokens (`<|seg|>`, `<|image_pad|>`, ...)."""
        for tok in self._reserved:
            if tok in text:
                raise ValueError(f"the prompt contains the reserved token {tok}")

    def encode_turns(
        self, turns: list[Turn], image: EncodedImage | None, add_generation_prompt: bool = False
    ) -> tuple[list[int], list[int]]:
        """Token ids of a conversation and, aligned with them, labels (-100 outside assistant answers).

        The image goes at the start of the first user turn.
        """
        ids: list[int] = []
        labels: list[int] = []

        def add(piece: list[int], learn: bool = False) -> None:
            ids.extend(piece)
            labels.extend(piece if learn else [-100] * len(piece))

        if self.settings.system_prompt is not None:
            add(self._text_ids(f"{IM_START}system\n{self.settings.system_prompt}{IM_END}\n"))
        image_pending = image is not None
        for turn in turns:
            if turn.role == "user":
                self.check_user_text(turn.text)
                add(self._text_ids(f"{IM_START}user\n"))
                if image_pending:
                    add(
                        [self.vision_start_id]
                        + [self.image_token_id] * image.num_cells
                        + [self.vision_end_id]
                    )
                    image_pending = False
                add(self._text_ids(f"{turn.text}{IM_END}\n"))
            else:
                add(self._text_ids(f"{IM_START}assistant\n"))
                add(self._text_ids(turn.text) + [self.im_end_id], learn=True)
                add(self._text_ids("\n"))
        if add_generation_prompt:
            add(self._text_ids(f"{IM_START}assistant\n"))
        return ids, labels

    def decode(self, ids: list[int]) -> str:
        """Answer text with `<|seg|>` kept (it marks where each mask belongs) and other specials dropped."""
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        for tok in self._reserved:
            if tok != SEG_TOKEN:
                text = text.replace(tok, "")
        return text

    # ------------------------------------------------------------------ training samples
    def encode_sample(self, sample: StampSample) -> dict:
        """A training example: ids, labels, image tensors and one patch-level target per `<|seg|>`."""
        image = self.encode_image(sample.load_image())
        ids, labels = self.encode_turns(sample.turns, image)
        targets, weights = [], []
        cw, ch = image.canvas_size
        for mask in sample.masks:
            if image.canvas is not None:  # the padding is no part of the object: ignored
                mask = np.asarray(mask)
                pad = ((0, ch - mask.shape[0]), (0, cw - mask.shape[1]))
                mask = np.pad(mask, pad, constant_values=IGNORE_INDEX)
            frac, valid = patch_targets(mask, image.grid_hw)
            thr = self.settings.target_threshold
            targets.append((frac >= thr).float() if thr is not None else frac)
            weights.append(valid)
        n_seg = sum(1 for i in ids if i == self.seg_token_id)
        if n_seg != len(targets):
            raise ValueError(
                f"sample {sample.id}: {n_seg} <|seg|> tokens after tokenisation, {len(targets)} masks"
            )
        return {"input_ids": ids, "labels": labels, "image": image, "targets": targets, "weights": weights}

    def collate(self, examples: list[dict], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Pad encoded examples into a batch for `StampModel.stamp_forward`."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        left = padding_side == "left"

        def pad(seqs: list[torch.Tensor], value: int) -> torch.Tensor:
            if left:
                seqs = [s.flip(0) for s in seqs]
            out = pad_sequence(seqs, batch_first=True, padding_value=value)
            return out.flip(1) if left else out

        ids = [torch.tensor(e["input_ids"], dtype=torch.long) for e in examples]
        batch = {
            "input_ids": pad(ids, self.pad_token_id),
            "attention_mask": pad([torch.ones_like(i) for i in ids], 0),
            "labels": pad([torch.tensor(e["labels"], dtype=torch.long) for e in examples], -100),
        }
        batch["mm_token_type_ids"] = (batch["input_ids"] == self.image_token_id).long() * batch[
            "attention_mask"
        ]
        images = [e["image"] for e in examples if e.get("image") is not None]
        if images:
            batch["pixel_values"] = torch.cat([im.pixel_values for im in images])
            batch["image_grid_thw"] = torch.stack([im.grid_thw for im in images])
        flat_t = [t.flatten() for e in examples for t in e.get("targets", [])]
        if flat_t:
            batch["mask_targets"] = pad_sequence(flat_t, batch_first=True)
            batch["mask_weights"] = pad_sequence(
                [w.flatten() for e in examples for w in e["weights"]], batch_first=True
            )
        return batch


def _pil_image_processor(settings: ProcessorSettings) -> Qwen2VLImageProcessorPil | None:
    """transformers' PIL processor for the "pil" resize; None for "fast" (done by `stamp.imaging.resize`)."""
    if settings.resize != "pil":
        return None
    return Qwen2VLImageProcessorPil(min_pixels=settings.min_pixels, max_pixels=settings.max_pixels)


def resize_mode_for(image_processor_type: str | None) -> str:
    """The resize a checkpoint folder's `image_processor_type` (preprocessor_config.json) gets in the
    authors' environment (transformers 4.57 with torchvision, where `AutoProcessor` picks the class):

        "Qwen2VLImageProcessorFast" (any "...Fast")  -> "fast"
        "Qwen2VLImageProcessor" (the 4.x slow name)  -> "fast": 4.57 loads it as the fast class anyway
                                                        (its FORCE_FAST_IMAGE_PROCESSOR list)
        "Qwen2VLImageProcessorPil" (5.x PIL class)   -> "pil"
        other names                                  -> "pil" (4.57 loads their slow class)
        None (no image_processor_type)               -> "pil": 4.57 then takes the class from the model
                                                        config and picks the slow one, which computes
                                                        exactly what "pil" computes
    """
    if image_processor_type is None:
        return "pil"
    if image_processor_type.endswith("Fast") or image_processor_type == "Qwen2VLImageProcessor":
        return "fast"
    return "pil"


def settings_from_preprocessor_config(
    pre: dict, settings: ProcessorSettings | None = None
) -> ProcessorSettings:
    """`settings` (default: `ProcessorSettings()`) with the pixel range and resize of a transformers
    preprocessor_config.json (its `min_pixels`/`max_pixels`, else `size`; `image_processor_type`)."""
    settings = settings or ProcessorSettings()
    size = pre.get("size") or {}
    return replace(
        settings,
        min_pixels=int(pre.get("min_pixels") or size.get("shortest_edge") or settings.min_pixels),
        max_pixels=int(pre.get("max_pixels") or size.get("longest_edge") or settings.max_pixels),
        resize=resize_mode_for(pre.get("image_processor_type")),
    )


def load_model_and_processor(name_or_path: str | Path, **kwargs):
    """(`StampModel.from_pretrained(name_or_path, **kwargs)`, its processor read beside it)."""
    from stamp.model.modeling import StampModel

    model = StampModel.from_pretrained(name_or_path, **kwargs)
    return model, StampProcessor.for_model(model)


def has_processor_files(path: str | Path) -> bool:
    """Whether a checkpoint folder says how to size images (stamp_processor.json or a stock
    preprocessor_config.json)."""
    return (Path(path) / PROCESSOR_FILE).is_file() or (Path(path) / "preprocessor_config.json").is_file()


def reserved_tokens(tokenizer) -> list[str]:
    """Every `<|...|>` control token the tokenizer knows (chat, vision, STAMP): user text may not contain
    them, and decoded answers drop all but `<|seg|>`. Read from the added-token table, because
    `all_special_tokens` lists only the named ones (eos, pad) for tokenizers built in code."""
    found = {t.content for t in tokenizer.added_tokens_decoder.values() if t.content.startswith("<|")}
    found |= {t for t in tokenizer.all_special_tokens if t.startswith("<|")}
    return sorted(found)


def resized_size(width: int, height: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) the image processor resizes to (multiples of 28), for documentation and tests."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    h, w = smart_resize(height, width, factor=CELL, min_pixels=min_pixels, max_pixels=max_pixels)
    return w, h


__all__ = [
    "StampProcessor",
    "ProcessorSettings",
    "EncodedImage",
    "resized_size",
    "resize_mode_for",
    "settings_from_preprocessor_config",
]
