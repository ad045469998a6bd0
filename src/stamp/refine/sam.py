"""SAM refinement of STAMP's coarse masks, and `build_refiner` for all refiners.

Both SAM refiners (`SamRefiner` here, `SamAuthorsRefiner` in `stamp.refine.sam_authors`) hold a frozen,
eval-mode transformers `SamModel` (or `Sam2Model`, when the installed transformers has it) loaded from
  - a LOCAL directory written by `save_pretrained` (e.g. a copy of facebook/sam-vit-huge), or
  - an original segment-anything checkpoint FILE such as `sam_vit_h_4b8939.pth` (what the STAMP authors'
    README points to), mapped strictly onto `SamModel` by `stamp.refine.sam_checkpoint`.
Nothing is downloaded.

`SamRefiner` refines a coarse mask in one image encoding plus a few cheap decoder passes:
  1. prompts derived deterministically from the coarse mask (`stamp.refine.prompts`): positive points
     deep inside it, negative points on confident background, its bounding box, and the cell
     probabilities as a mask prompt with a negative-logit padding;
  2. SAM's three multimask candidates; the one agreeing best (IoU) with the coarse mask is kept;
  3. `extra_passes` more passes feeding back the kept low-resolution logits (as the authors do);
  4. if the final mask agrees with the coarse mask less than `min_agreement`, the coarse mask is
     returned instead, with `used_fallback=True` and a warning.
The image embedding of the last image is cached, so several masks on one image encode it once.

Pre-processing is done here (no torchvision): SAM v1 resizes the longest side to the model's input size
(1024) and pads bottom/right with zeros after normalisation; SAM 2 resizes to a square. Mean/std come
from the directory's preprocessor_config.json (or a checkpoint's pixel_mean / pixel_std) when present,
else the ImageNet values SAM uses.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from PIL import Image

from stamp.refine.base import (
    RefineError,
    RefineResult,
    check_refine_inputs,
    mask_agreement,
    to_rgb_image,
)
from stamp.refine.prompts import SamFrame, SamPrompts, build_prompts
from stamp.refine.sam_checkpoint import is_sam_checkpoint_file, load_original_sam

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MODEL_CLASSES = {"sam": "SamModel", "sam2": "Sam2Model"}


class SamBase:
    """A frozen SAM / SAM 2 with what both SAM refiners share: the input frame, pre-processing, the
    cached image embedding, one decoder pass and the mask post-processing.

    Args:
        model_dir: a transformers SAM directory (config.json + weights) or an original segment-anything
            checkpoint file (.pth / .pt / .bin / .safetensors). Nothing is downloaded.
        device: torch device for SAM.
    """

    def __init__(self, model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        self.model_dir = Path(model_dir)
        self.device = torch.device(device)
        self.model, self.model_type, (self.mean, self.std) = _load_sam(self.model_dir, self.device)
        prompt_cfg = self.model.config.prompt_encoder_config
        self.input_size = _as_int(prompt_cfg.image_size)  # square frame side (1024)
        self.mask_input_size = 4 * (self.input_size // _as_int(prompt_cfg.patch_size))  # 256
        self._cache_key: str | None = None
        self._cache_embeddings = None

    def frame(self, image_size: tuple[int, int]) -> SamFrame:
        """The mapping of an (H, W) image into this model's input frame."""
        if self.model_type == "sam2":
            return SamFrame.stretch(image_size, self.input_size)
        return SamFrame.letterbox(image_size, self.input_size)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """(1, 3, S, S) float32 pixel values for an RGB image (see `sam_pixel_values`)."""
        return sam_pixel_values(image, self.frame((image.height, image.width)), self.mean, self.std)

    def postprocess(self, low_res: torch.Tensor, frame: SamFrame) -> np.ndarray:
        """(k, m, m) low-resolution logits -> (k, H, W) bool masks at the original size (logit > 0)."""
        x = F.interpolate(
            low_res[None].float(), size=(frame.target, frame.target), mode="bilinear", align_corners=False
        )
        h, w = frame.resized_size
        x = F.interpolate(x[..., :h, :w], size=frame.orig_size, mode="bilinear", align_corners=False)
        return (x[0] > 0).cpu().numpy()

    def _embed(self, image: Image.Image):
        """Image embeddings (a tensor for SAM, a list of tensors for SAM 2), cached for the last image."""
        key = f"{image.size}:{hashlib.sha1(image.tobytes()).hexdigest()}"
        if key != self._cache_key:
            pixels = self.preprocess(image).to(self.device, dtype=self.model.dtype)
            self._cache_embeddings = self.model.get_image_embeddings(pixels)
            self._cache_key = key
        return self._cache_embeddings

    def _predict(
        self,
        embeddings,
        *,
        points: torch.Tensor | None,
        labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        multimask: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One prompt-encoder + mask-decoder pass on cached embeddings.

        Args:
            points: (1, 1, N, 2) x, y in the frame; labels: (1, 1, N) 1 / 0; boxes: (1, 1, 4) in the frame;
            masks: (1, 1, m, m) mask-prompt logits. Each may be None.

        Returns:
            ((k, m, m) float32 low-resolution logits, (k,) float32 predicted IoU), on the CPU; k = 3 with
            `multimask`, else 1.
        """
        dtype = self.model.dtype
        out = self.model(
            image_embeddings=embeddings,
            input_points=None if points is None else points.to(self.device, dtype=dtype),
            input_labels=None if labels is None else labels.to(self.device),
            input_boxes=None if boxes is None else boxes.to(self.device, dtype=dtype),
            input_masks=None if masks is None else masks.to(self.device, dtype=dtype),
            multimask_output=multimask,
        )
        return out.pred_masks[0, 0].float().cpu(), out.iou_scores[0, 0].float().cpu()


class SamRefiner(SamBase):
    """Refine coarse masks with a frozen SAM / SAM 2 (the module docstring describes the procedure).

    Args:
        model_dir: a transformers SAM directory written by `save_pretrained` (e.g. a local copy of
            facebook/sam-vit-huge) or an original segment-anything checkpoint file such as
            `sam_vit_h_4b8939.pth`. Nothing is downloaded.
        device: torch device for SAM.
        n_points: positive points and (up to) as many negative points.
        seed: seeds the tie-breaking between equally good point candidates.
        min_agreement: minimum IoU between SAM's mask and the coarse mask; below it, fall back.
        extra_passes: decoder passes that feed back the previous low-resolution logits.
        pad_logit: logit of the mask prompt's padding (must be negative: "not the object").
        use_box: also prompt with the coarse mask's bounding box.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        device: str | torch.device = "cpu",
        n_points: int = 3,
        seed: int = 0,
        *,
        min_agreement: float = 0.5,
        extra_passes: int = 2,
        pad_logit: float = -20.0,
        use_box: bool = True,
    ) -> None:
        if pad_logit >= 0:
            raise ValueError(f"pad_logit must be negative, got {pad_logit}")
        super().__init__(model_dir, device)
        self.n_points, self.seed = int(n_points), int(seed)
        self.min_agreement, self.extra_passes = float(min_agreement), int(extra_passes)
        self.pad_logit, self.use_box = float(pad_logit), bool(use_box)

    def prompts(
        self, image_size: tuple[int, int], coarse_probs: np.ndarray, coarse_mask: np.ndarray
    ) -> SamPrompts:
        """Prompts for a non-empty (H, W) `coarse_mask` on an image of `image_size` (H, W)."""
        return build_prompts(
            coarse_probs,
            coarse_mask,
            self.frame(image_size),
            self.mask_input_size,
            n_points=self.n_points,
            seed=self.seed,
            pad_logit=self.pad_logit,
        )

    @torch.no_grad()
    def refine(
        self, image: Image.Image | np.ndarray, coarse_probs: np.ndarray, coarse_mask: np.ndarray
    ) -> RefineResult:
        """Refine one coarse mask; see the module docstring.

        Args:
            image: PIL image (any mode; converted to RGB) or (H, W, 3) uint8 array.
            coarse_probs: (gh, gw) float probabilities in [0, 1] covering the whole image.
            coarse_mask: (H, W) bool coarse mask at the original size.

        Returns:
            RefineResult with an (H, W) bool mask; an empty coarse mask is returned unchanged.
        """
        rgb = to_rgb_image(image)
        probs, mask = check_refine_inputs(rgb, coarse_probs, coarse_mask)
        if not mask.any():
            return RefineResult(mask=mask.copy(), score=1.0)
        prompts = self.prompts((rgb.height, rgb.width), probs, mask)
        embeddings = self._embed(rgb)
        low_res = self._decode(embeddings, prompts, prompts.input_masks, multimask=True)  # (3, m, m)
        masks = self.postprocess(low_res, prompts.frame)  # (3, H, W) bool
        scores = [mask_agreement(m, mask) for m in masks]
        best = int(np.argmax(scores))
        best_low, refined = low_res[best], masks[best]
        for _ in range(self.extra_passes):
            fed_back = self._reset_padding(best_low, prompts.frame)[None, None]
            best_low = self._decode(embeddings, prompts, fed_back, multimask=False)[0]
            refined = self.postprocess(best_low[None], prompts.frame)[0]
        score = mask_agreement(refined, mask)
        if score < self.min_agreement:
            warning = (
                f"SAM refinement disagrees with the coarse mask (IoU {score:.3f} < {self.min_agreement}); "
                "kept the coarse mask"
            )
            return RefineResult(mask=mask.copy(), score=1.0, used_fallback=True, warning=warning)
        return RefineResult(mask=refined, score=score)

    def _decode(
        self, embeddings, prompts: SamPrompts, mask_input: torch.Tensor, *, multimask: bool
    ) -> torch.Tensor:
        """One mask-decoder pass -> (k, m, m) float32 low-resolution logits on the CPU."""
        low_res, _ = self._predict(
            embeddings,
            points=prompts.input_points,
            labels=prompts.input_labels,
            boxes=prompts.input_boxes if self.use_box else None,
            masks=mask_input,
            multimask=multimask,
        )
        return low_res

    def _reset_padding(self, low_res: torch.Tensor, frame: SamFrame) -> torch.Tensor:
        """(m, m) logits with the frame's padding region set back to `pad_logit`."""
        m = low_res.shape[-1]
        h = -(-frame.resized_size[0] * m // frame.target)  # ceil: keep rows that hold any image
        w = -(-frame.resized_size[1] * m // frame.target)
        out = torch.full_like(low_res, self.pad_logit)
        out[:h, :w] = low_res[:h, :w]
        return out

    def __repr__(self) -> str:
        return f"SamRefiner({str(self.model_dir)!r}, model_type={self.model_type!r}, device={str(self.device)!r})"


def sam_pixel_values(
    image: Image.Image, frame: SamFrame, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """(1, 3, S, S) float32: the RGB image resized (PIL bilinear) to `frame.resized_size`, scaled to
    [0, 1], normalised with mean/std, zero-padded bottom/right to the S x S frame (as SAM does)."""
    h, w = frame.resized_size
    arr = np.asarray(image.resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0  # (h, w, 3)
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    pixels = torch.zeros(1, 3, frame.target, frame.target)
    pixels[0, :, :h, :w] = torch.from_numpy(arr).permute(2, 0, 1)
    return pixels


def _load_sam(
    path: Path, device: torch.device
) -> tuple[torch.nn.Module, str, tuple[tuple[float, ...], tuple[float, ...]]]:
    """A frozen, eval-mode SAM / SAM 2 from a local directory or an original checkpoint file, with its
    normalisation (mean, std); RefineError on any problem."""
    if is_sam_checkpoint_file(path) or path.is_file():
        model, mean_std = load_original_sam(path)
        model.to(device)
        return model, "sam", mean_std or (IMAGENET_MEAN, IMAGENET_STD)
    config_path = path / "config.json"
    if not path.is_dir():
        raise RefineError(f"SAM model directory not found: {path}")
    if not config_path.is_file():
        raise RefineError(f"not a SAM model directory (no config.json): {path}")
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise RefineError(f"cannot read {config_path}: {exc}") from None
    cls_name = _MODEL_CLASSES.get(model_type)
    if cls_name is None or not hasattr(transformers, cls_name):
        supported = [k for k, v in _MODEL_CLASSES.items() if hasattr(transformers, v)]
        raise RefineError(
            f"unsupported SAM model_type {model_type!r} in {config_path}; supported: {supported}"
        )
    try:
        model = getattr(transformers, cls_name).from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RefineError(f"cannot load {cls_name} from {path}: {first_line}") from None
    model.to(device).eval().requires_grad_(False)
    return model, model_type, _load_mean_std(path)


def _load_mean_std(model_dir: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation from preprocessor_config.json when present, else SAM's ImageNet mean/std."""
    path = model_dir / "preprocessor_config.json"
    if path.is_file():
        try:
            cfg = json.loads(path.read_text())
            return tuple(map(float, cfg["image_mean"])), tuple(map(float, cfg["image_std"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return IMAGENET_MEAN, IMAGENET_STD


def _as_int(value: int | list[int] | tuple[int, ...]) -> int:
    """Config sizes may be an int or a (square) pair."""
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)
