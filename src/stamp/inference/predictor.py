"""`StampPredictor`: set an image once, then chat and segment as often as you like.

>>> from stamp import StampModel, StampPredictor
>>> predictor = StampPredictor(StampModel.from_pretrained("path/to/model"))
>>> predictor.set_image("photo.jpg")                      # vision tower runs here, once
>>> result = predictor.chat("Please segment the dog.")    # answer + one mask per <|seg|>
>>> result.text, result.masks[0].mask.shape               # ('Sure, it is <|seg|>.', (H, W))
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stamp.data.sample import HistoryLike, Turn, parse_history
from stamp.imaging import ImageLike
from stamp.imaging.resize import pad_to_aspect
from stamp.inference.generation import (
    FINISH_REASONS,
    EventCallback,
    GenerationConfig,
    GenerationRequest,
    PromptCache,
    generate,
)
from stamp.inference.options import DEFAULT_MAX_PROMPT_TOKENS, UPSAMPLE_SPACES, PredictorOptions  # noqa: F401  (re-exported)
from stamp.model.settings import check_probability
from stamp.model.tokens import PAD
from stamp.outputs.files import result_to_dict
from stamp.outputs.records import encode_rle, mask_phrase
from stamp.processing import EncodedImage, StampProcessor


class PromptTooLongError(ValueError):
    """A request with more text tokens than the predictor's `max_prompt_tokens`."""


@dataclass
class StampMask:
    """One predicted mask.

    mask: (H, W) bool at the original image size. probs: (H, W) float32 foreground probability.
    patch_logits: (gh, gw) float32 classifier logits, one per 28x28 cell. score: mean probability of the
    cells predicted foreground (0.0 for an empty mask).
    """

    mask: np.ndarray
    probs: np.ndarray
    patch_logits: np.ndarray
    score: float
    coarse_mask: np.ndarray | None = None
    """The unrefined (upsampled, thresholded) mask when a refiner changed `mask`; else None."""
    warning: str | None = None
    """Set when the refiner fell back to the coarse mask (e.g. SAM disagreed badly)."""
    index: int = 0
    """k: the mask of the k-th `<|seg|>` of its answer."""
    phrase: str = ""
    """What the mask shows: the answer's words before its `<|seg|>`, or what the request asked for where
    those name nothing (`stamp.outputs.records.mask_phrase`)."""

    @property
    def patch_mask(self) -> np.ndarray:
        """(gh, gw) bool patch-level prediction (logit > 0)."""
        return self.patch_logits > 0

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def bbox(self) -> list[int] | None:
        """[x, y, w, h] of the mask (COCO convention), None when empty."""
        ys, xs = np.nonzero(self.mask)
        if len(xs) == 0:
            return None
        return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]

    @property
    def rle(self) -> dict:
        """The mask as COCO run-length encoding, {"size": [h, w], "counts": str}: what pycocotools
        writes in JSON (decode with `mask_utils.decode({**rle, "counts": rle["counts"].encode()})`)."""
        return encode_rle(self.mask)


@dataclass
class StampResult:
    """The answer and its masks. `text` keeps each `<|seg|>` where the model emitted it; `masks[k]`
    belongs to the k-th one. `timings` (seconds): vision, prefill, decode, mask, postprocess."""

    text: str
    masks: list[StampMask] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "eos"
    """Why the answer ended: "eos" (the model ended it), "length" (it used up `max_new_tokens`: it may be
    cut off) or "repetition" (it was stopped in a degenerate loop: see `GenerationConfig.repetition_stop`)."""
    prompt: str | None = None
    """The request's prompt (names a mask the answer does not name)."""
    batch_size: int = 1
    """How many answers shared this one's forward passes (`chat_batch`): its `timings` of vision,
    prefill, decode and mask are the batch's (vision: an equal share), not its own."""

    def to_dict(self) -> dict:
        """The JSON-ready record of this result: exactly what result.json holds (without its `image`
        and the masks' `file`) and what the HTTP API returns (without its `id`, `image`, `png`): prompt,
        text, finish_reason, masks (`StampMask.to_dict`), timings (this answer's: its share of what a
        batch shared) and batch ({size, timings}). `stamp.outputs.files.result_to_dict`."""
        return result_to_dict(self)


@dataclass
class ChatRequest:
    """One conversation turn for `StampPredictor.chat_batch`: an image, a prompt, and optionally the
    earlier turns, a forced answer prefix and this request's own token budget."""

    image: ImageLike
    prompt: str
    history: HistoryLike = None
    answer_prefix: str | None = None
    max_new_tokens: int | None = None
    """This request's token budget (None: the call's `GenerationConfig.max_new_tokens`)."""
    refine: bool = True
    """False: the result's masks skip the refiner (for callers that refine streamed masks themselves)."""
    repetition_stop: bool | None = None
    """Stop this answer in a degenerate loop (None: the call's `GenerationConfig.repetition_stop`, else
    the predictor's)."""


def logits_to_mask(
    logits: torch.Tensor, size_hw: tuple[int, int], threshold: float = 0.5, space: str = "prob"
) -> StampMask:
    """Upsample (gh, gw) logits to the original (H, W) and threshold.

    space="prob" interpolates sigmoid probabilities bilinearly (default: keeps thin regions that weak
    positive logits would lose); "logit" interpolates the raw logits bilinearly and thresholds at
    logit(threshold); "nearest" thresholds each cell, then copies it to the pixels it covers
    (`F.interpolate(mode="nearest")`: the authors' evaluation, with threshold 0.5 = logit 0).
    """
    if space not in UPSAMPLE_SPACES:
        raise ValueError(f"upsample space must be one of {UPSAMPLE_SPACES}, got {space!r}")
    lg = logits.float()[None, None]
    if space == "prob":
        probs = F.interpolate(lg.sigmoid(), size=size_hw, mode="bilinear", align_corners=False)[0, 0]
    elif space == "nearest":  # a copy of each cell's probability: thresholding it thresholds the cell
        probs = F.interpolate(lg.sigmoid(), size=size_hw, mode="nearest")[0, 0]
    else:
        probs = F.interpolate(lg, size=size_hw, mode="bilinear", align_corners=False)[0, 0].sigmoid()
    mask = probs > threshold
    cells = logits.float().sigmoid()
    fg = cells[cells > threshold]
    score = float(fg.mean()) if fg.numel() else 0.0
    return StampMask(mask.numpy(), probs.numpy().astype(np.float32), logits.float().numpy(), score)


def crop_mask(mask: StampMask, size: tuple[int, int]) -> StampMask:
    """`mask` (of a padded image, `EncodedImage.canvas`) cut to the top-left `size` = (width, height):
    the original image's pixels. Its cell logits and score stay those of the padded image."""
    w, h = size
    mask.mask, mask.probs = mask.mask[:h, :w].copy(), mask.probs[:h, :w].copy()
    if mask.coarse_mask is not None:
        mask.coarse_mask = mask.coarse_mask[:h, :w].copy()
    return mask


def resolve_threshold(model, threshold: float | None = None) -> float:
    """`threshold` if given, else the model's calibrated `mask_threshold` (0.5 for models without one).
    ValueError unless it lies in (0, 1)."""
    if threshold is None:
        settings = getattr(model, "stamp", None)
        threshold = getattr(settings, "mask_threshold", 0.5)
    return check_probability("threshold", threshold)


def resolve_refine(spec, model):
    """The refinement to use with `model`: "auto" (or None) -> the model's own default
    (`StampSettings.refine` of its checkpoint: "none" unless the checkpoint says otherwise); any other
    spec (or refiner object) as given."""
    if spec is None or spec == "auto":
        return getattr(getattr(model, "stamp", None), "refine", "none")
    return spec


class StampPredictor:
    """Stateful predictor: `set_image()` (expensive, once) then `chat()` (cheap, many times)."""

    def __init__(
        self,
        model,
        processor: StampProcessor | None = None,
        *,
        options: PredictorOptions | None = None,
        **option_values: Any,
    ):
        """`options` (default `PredictorOptions()`), with any of its fields given as keywords on top:
        `StampPredictor(model, threshold=0.4, refine="none")`. TypeError for a name that is not one of
        its fields, ValueError for a bad value; see `PredictorOptions` for what each does."""
        options = replace(options or PredictorOptions(), **option_values)
        self.options = options
        threshold, upsample, refine = options.threshold, options.upsample, options.refine
        self.repetition_stop = bool(options.repetition_stop)
        self.max_prompt_tokens = options.max_prompt_tokens
        self.max_image_pixels = options.max_image_pixels
        self.model = model.eval()
        # a model from StampModel.from_pretrained: the processor of the folder it came from
        self.processor = processor if processor is not None else StampProcessor.for_model(model)
        self.threshold = resolve_threshold(model, threshold)
        self.upsample = upsample
        refine = resolve_refine(refine, model)
        if isinstance(refine, str):
            from stamp.refine import build_refiner

            refine = (
                None
                if refine == "none"
                else build_refiner(refine, device=model.device, threshold=self.threshold)
            )
        self.refiner = refine
        tok = self.processor.tokenizer
        self.pad_id = self.processor.pad_token_id
        self.eos_ids = {self.processor.im_end_id, tok.convert_tokens_to_ids(PAD)}
        self._image: EncodedImage | None = None
        self._features: torch.Tensor | None = None
        self._vision_seconds = 0.0
        self._prompt_cache: PromptCache | None = None
        self.vision_calls = 0  # how often the vision tower ran (a second query on an image skips it)

    # ------------------------------------------------------------------ image
    def _encode(self, image: ImageLike) -> tuple[EncodedImage, torch.Tensor, float]:
        return self._encode_many([image])[0]

    def _encode_many(self, images: Sequence[ImageLike]) -> list[tuple[EncodedImage, torch.Tensor, float]]:
        """Processor + ONE vision-tower call for all `images`; per image (encoded, features, seconds),
        the seconds being an equal share of the batch's time."""
        t0 = time.perf_counter()
        encs = [self.processor.encode_image(im, self.max_image_pixels) for im in images]
        dtype = next(self.model.parameters()).dtype
        with torch.no_grad():
            pv = torch.cat([e.pixel_values for e in encs]).to(self.model.device, dtype)
            grid = torch.stack([e.grid_thw for e in encs]).to(self.model.device)
            feats = self.model.encode_images(pv, grid)
        self.vision_calls += len(encs)
        share = (time.perf_counter() - t0) / max(len(encs), 1)
        return [(e, f, share) for e, f in zip(encs, feats)]

    def set_image(self, image: ImageLike) -> None:
        """Encode `image` (path, PIL, or HxW[xC] array) with the vision tower and keep its features.
        Questions on it (`chat`) share the prompt pass of their common prefix (`PromptCache`)."""
        self._image, self._features, self._vision_seconds = self._encode(image)
        self._prompt_cache = PromptCache()  # questions on this image share their common prompt prefix

    def reset_image(self) -> None:
        self._image = self._features = self._prompt_cache = None

    @property
    def grid_hw(self) -> tuple[int, int] | None:
        """(gh, gw) cells of the current image: the shape of its masks' `patch_logits`."""
        return self._image.grid_hw if self._image is not None else None

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(width, height) of the current image."""
        return self._image.size if self._image is not None else None

    @property
    def image_features(self) -> torch.Tensor | None:
        """The vision tower's output for the current image, (cells, hidden) in raster order: what the
        language model receives at the image tokens."""
        return self._features

    # ------------------------------------------------------------------ chat
    def prompt_tokens(
        self,
        prompt: str,
        history: HistoryLike = None,
        answer_prefix: str | None = None,
    ) -> int:
        """How many text tokens a request has: chat template, history, prompt and answer prefix (what
        `max_prompt_tokens` bounds; the image's cells are not counted). ValueError for an empty prompt
        or reserved tokens in user text."""
        ids, forced = self._text_request(prompt, history, answer_prefix, None)
        return len(ids) + len(forced)

    def check_prompt(
        self,
        prompt: str,
        history: HistoryLike = None,
        answer_prefix: str | None = None,
    ) -> int:
        """`prompt_tokens`, or `PromptTooLongError` when over `max_prompt_tokens`. Tokenises only."""
        return self._check_length(self.prompt_tokens(prompt, history, answer_prefix))

    def _check_length(self, n: int) -> int:
        if self.max_prompt_tokens is not None and n > self.max_prompt_tokens:
            raise PromptTooLongError(
                f"the request is {n} tokens long (prompt, history and answer prefix); "
                f"the limit is {self.max_prompt_tokens} tokens"
            )
        return n

    def _text_request(self, prompt, history, answer_prefix, enc) -> tuple[list[int], list[int]]:
        """(conversation ids with `enc`'s image tokens, or none when `enc` is None; forced answer ids)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the prompt is empty")
        turns = parse_history(history) + [Turn("user", prompt)]
        ids, _ = self.processor.encode_turns(turns, enc, add_generation_prompt=True)
        forced = self.processor._text_ids(answer_prefix) if answer_prefix else []
        return ids, forced

    def _request(self, enc, feats, prompt, history, answer_prefix) -> GenerationRequest:
        ids, forced = self._text_request(prompt, history, answer_prefix, enc)
        return GenerationRequest(ids, feats, enc.grid_thw, forced)

    def _finish(
        self,
        out,
        enc: EncodedImage,
        vision_seconds: float,
        refine: bool = True,
        prompt: str | None = None,
        batch_size: int = 1,
    ) -> StampResult:
        t0 = time.perf_counter()
        w, h = enc.canvas_size  # the image's own size, unless it was padded (`EncodedImage.canvas`)
        text = self.processor.decode(out.token_ids)
        masks = [logits_to_mask(lg, (h, w), self.threshold, self.upsample) for lg in out.mask_logits]
        for k, m in enumerate(masks):
            m.index, m.phrase = k, mask_phrase(text, k, prompt)
        timings = {"vision": vision_seconds, "prefill": 0.0, "decode": 0.0, "mask": 0.0, **out.timings}
        timings["postprocess"] = time.perf_counter() - t0
        if self.refiner is not None and refine:
            t1 = time.perf_counter()
            for m in masks:
                self._refine(m, enc.canvas or enc.image)
            timings["refine"] = time.perf_counter() - t1
        if enc.canvas is not None:
            masks = [crop_mask(m, enc.size) for m in masks]
        reason = out.finish_reason
        assert reason in FINISH_REASONS, reason
        return StampResult(text, masks, timings, out.token_ids, reason, prompt, batch_size)

    def _refine(self, m: StampMask, image) -> None:
        probs = 1.0 / (1.0 + np.exp(-m.patch_logits))
        res = self.refiner.refine(image, probs, m.mask)
        if res.used_fallback or not np.array_equal(res.mask, m.mask):
            m.coarse_mask = m.mask
        m.mask, m.warning = res.mask, res.warning

    def chat(
        self,
        prompt: str,
        history: HistoryLike = None,
        *,
        answer_prefix: str | None = None,
        generation: GenerationConfig | None = None,
        on_event: EventCallback | None = None,
        **decoding: Any,
    ) -> StampResult:
        """Answer `prompt` about the current image; one mask per `<|seg|>` the answer contains.

        `chat_batch` with one request, on the image `set_image` encoded (its vision tower output reused).

        Args:
            history: earlier turns of the conversation, oldest first (`stamp.data.sample.parse_history`:
                `Turn`s, (role, text) pairs or {"role", "text"} dicts, alternating from "user" and ending
                with "assistant"; `HistoryError`, a ValueError, otherwise).
            answer_prefix: text the answer is forced to start with (e.g. "Sure, it is <|seg|>" to force
                a mask, as the literature's evaluations do); generation continues after it.
            generation: the decoding settings (default `GenerationConfig()`).
            on_event: streaming callback, see `stamp.inference.generation.EventCallback` (row is 0).
            decoding: `GenerationConfig` fields on top of `generation`, e.g. `max_new_tokens=32`,
                `do_sample=True, seed=0`, `predict_masks=False` (the text is the same either way).
        """
        if self._image is None:
            raise ValueError("no image: call set_image() first")
        cfg = replace(generation or GenerationConfig(), **decoding)
        request = ChatRequest(self._image.image, prompt, history, answer_prefix)
        self.check_prompt(prompt, history, answer_prefix)
        encoded = [(self._image, self._features, self._vision_seconds)]
        result = self._answer([request], encoded, cfg, on_event, self._prompt_cache)[0]
        self._vision_seconds = 0.0  # later queries on this image do not run the vision tower
        return result

    def predict_batch(
        self,
        items: Sequence[tuple[ImageLike, str]],
        *,
        answer_prefix: str | None = None,
        generation: GenerationConfig | None = None,
        on_event: EventCallback | None = None,
        **decoding: Any,
    ) -> list[StampResult]:
        """`chat_batch` for (image, prompt) pairs that share an answer prefix; `decoding` as for `chat`."""
        requests = [ChatRequest(image, prompt, answer_prefix=answer_prefix) for image, prompt in items]
        cfg = replace(generation or GenerationConfig(), **decoding)
        return self.chat_batch(requests, generation=cfg, on_event=on_event)

    def chat_batch(
        self,
        requests: Sequence[ChatRequest],
        *,
        generation: GenerationConfig | None = None,
        on_event: EventCallback | None = None,
    ) -> list[StampResult]:
        """Answers to several `ChatRequest`s in one left-padded batch: each may have its own image,
        history, answer prefix, token budget and repetition stop, and they share every forward pass and
        the decoding settings `generation` (default `GenerationConfig()`; its `repetition_stop`, when
        None, is the predictor's). Every request's length is checked (`check_prompt`) before the vision
        tower runs. `on_event`: streaming callback (see `EventCallback`); its row is the request's index."""
        if not requests:
            return []
        for r in requests:
            self.check_prompt(r.prompt, r.history, r.answer_prefix)
        encoded = self._encode_many([r.image for r in requests])
        return self._answer(requests, encoded, generation or GenerationConfig(), on_event)

    def _generate(self, requests, cfg: GenerationConfig, on_event) -> list:
        """The answers of `GenerationRequest`s: STAMP's two-phase generation (a subclass may decode its
        masks another way)."""
        return generate(self.model, requests, cfg, self.pad_id, self.eos_ids, on_event)

    def _answer(
        self, requests, encoded, cfg: GenerationConfig, on_event, prompt_cache: PromptCache | None = None
    ) -> list[StampResult]:
        """Generate for checked `requests` whose images are `encoded` ((image, features, seconds) each);
        a single request reuses and refreshes `prompt_cache` (`stamp.inference.generation.PromptCache`)."""
        if cfg.repetition_stop is None:
            cfg = replace(cfg, repetition_stop=self.repetition_stop)
        reqs = []
        for (enc, feats, _), r in zip(encoded, requests):
            req = self._request(enc, feats, r.prompt, r.history, r.answer_prefix)
            req.max_new_tokens, req.repetition_stop = r.max_new_tokens, r.repetition_stop
            req.prompt_cache = prompt_cache if len(requests) == 1 else None
            reqs.append(req)
        outs = self._generate(reqs, cfg, on_event)
        return [
            self._finish(o, enc, secs, r.refine, r.prompt, len(requests))
            for o, (enc, _, secs), r in zip(outs, encoded, requests)
        ]

    def postprocess_logits(self, logits: torch.Tensor, image) -> StampMask:
        """The mask `chat()` gives for (gh, gw) patch `logits` on `image` (an RGB PIL image as the model
        saw it): upsampled to its size, thresholded and refined as configured. Used when streaming.
        An image padded for the backbone (`pad_to_aspect`) is handled as `chat()` handles it."""
        canvas = pad_to_aspect(image)
        w, h = canvas.size
        mask = logits_to_mask(logits, (h, w), self.threshold, self.upsample)
        if self.refiner is not None:
            self._refine(mask, canvas)
        return mask if canvas is image else crop_mask(mask, image.size)
