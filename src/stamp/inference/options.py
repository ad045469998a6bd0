"""The options of the predictor (`PredictorOptions`) and of decoding (`GenerationConfig`): plain
dataclasses, apart from the modules that use them so that the command line generates its options from
them (`stamp.cli.args`) without importing torch or transformers. `stamp.inference.predictor` and
`stamp.inference.generation` export them as before."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stamp.imaging import DEFAULT_MAX_IMAGE_PIXELS
from stamp.imaging.load import MAX_IMAGE_PIXELS, check_max_pixels

UPSAMPLE_SPACES = ("prob", "logit", "nearest")
DEFAULT_MAX_PROMPT_TOKENS = 8192
"""The default bound on a request's text tokens: the chat template, the history, the prompt and the
answer prefix (the image's cells are not counted). Above it a request is refused before any model work."""


@dataclass
class PredictorOptions:
    """How a `StampPredictor` turns answers into masks and which requests it takes: the one declaration
    of these options, read by `StampPredictor(model, options, **same names)`, the server
    (`create_app(model, settings, options)`) and the command line (`stamp.cli.args.add_predictor_args`
    generates its --threshold, --refine and --no-repetition-stop from these fields). A field's metadata
    "help" is its command-line help where the docstring speaks of Python values."""

    threshold: float | None = field(
        default=None,
        metadata={
            "help": "foreground probability threshold in (0, 1) (default: the model's calibrated "
            "mask_threshold, else 0.5)"
        },
    )
    """Foreground probability threshold in (0, 1); None: the model's own (`mask_threshold` of its STAMP
    settings, 0.5 unless calibrated)."""
    upsample: str = "prob"
    """How cell logits become pixels: "prob" (bilinear on probabilities), "logit" (bilinear on logits) or
    "nearest" (threshold the cells, then nearest: the authors' evaluation)."""
    refine: Any = field(
        default="auto",
        metadata={
            "help": "sub-patch refinement: image-guided upsampling, or SAM from a local transformers SAM "
            "folder or an original checkpoint file (sam_vit_h_4b8939.pth): 'sam' is the project's "
            "refiner, 'sam-authors' the authors' evaluation procedure (seeded points) "
            "(default auto: the model's own, from its config -- guided for the bundled model, none "
            "unless a checkpoint names one)"
        },
    )
    """How coarse cell masks are refined to pixels: "auto" (the checkpoint's own, `StampSettings.refine`:
    "guided" for the bundled model, "none" unless a checkpoint says otherwise), "none", "guided" (image-guided upsampling), "sam:PATH" (a local SAM directory), or any
    object with `refine(image, coarse_probs, coarse_mask) -> RefineResult`."""
    repetition_stop: bool = field(
        default=True,
        metadata={
            "help": "let an answer that keeps repeating itself (the same n-gram over and over) run on to "
            "the token limit; by default it is stopped and its finish_reason is 'repetition'"
        },
    )
    """End an answer caught in a degenerate loop (the same n-gram repeating:
    `stamp.inference.generation.repeating_period`) with finish reason "repetition"; False lets it run to
    the end of its turn or its token budget. A request's own `ChatRequest.repetition_stop`, or a
    `GenerationConfig.repetition_stop` handed to a call, goes first."""
    max_prompt_tokens: int | None = DEFAULT_MAX_PROMPT_TOKENS
    """Refuse (`PromptTooLongError`, a ValueError) a request with more text tokens than this -- chat
    template, history, prompt and answer prefix; the image's cells are not counted -- before any model
    work. None: no bound."""

    max_image_pixels: int = field(
        default=DEFAULT_MAX_IMAGE_PIXELS,
        metadata={
            "help": f"refuse an image of more pixels (width x height) than this (at most {MAX_IMAGE_PIXELS}), "
            "checked from the file's header before decoding; the server answers 413 too_many_pixels "
            f"(default {DEFAULT_MAX_IMAGE_PIXELS})"
        },
    )
    """Refuse (`stamp.imaging.ImageTooLargeError`, a ValueError) an image of more pixels than this --
    a file checked from its header, before any pixel is decoded -- in the Python API, the CLI and the
    server (413 `too_many_pixels`): the one image size limit (`stamp.imaging.DEFAULT_MAX_IMAGE_PIXELS`,
    25 megapixels; at most Pillow's decompression-bomb guard, `stamp.imaging.load.MAX_IMAGE_PIXELS`)."""

    def __post_init__(self) -> None:
        check_max_pixels(self.max_image_pixels)
        if self.upsample not in UPSAMPLE_SPACES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_SPACES}, got {self.upsample!r}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1 or None, got {self.max_prompt_tokens}")
        if self.threshold is not None:
            from stamp.model.settings import check_probability  # (imports torch: not at parse time)

            check_probability("threshold", self.threshold)


@dataclass
class GenerationConfig:
    """Decoding settings: the one declaration of the decoding options, which `StampPredictor.chat`,
    `chat_batch` and the command line's options (`stamp.cli.args.add_generation_args`) take."""

    max_new_tokens: int = 128
    """Answer token budget: most tokens generated after any forced prefix."""
    do_sample: bool = False
    """Sample the answer (temperature, top-k, top-p) instead of decoding greedily."""
    temperature: float = 1.0
    """Sampling temperature (> 0)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens reaching this probability, in (0, 1]."""
    top_k: int = 0
    """Sample among the k likeliest tokens only (0: all)."""
    seed: int | None = None
    """Seed of the sampling generator (sampling is reproducible given a seed)."""
    predict_masks: bool = True
    """Run the mask pass at each `<|seg|>`; False gives the text alone (used to show isolation)."""
    repetition_stop: bool | None = None
    """End an answer caught in a degenerate loop (`repeating_period`) with finish reason "repetition";
    False lets it run to the end-of-turn token or the budget. None: the caller's default (a
    `StampPredictor`'s `repetition_stop`; on for `generate` itself)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
