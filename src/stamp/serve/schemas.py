"""Pydantic models of the HTTP API's requests and responses (they make up the OpenAPI schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class HistoryTurn(BaseModel):
    """One earlier turn of the conversation."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    text: str


class SegmentOptions(BaseModel):
    """What to ask about the image (shared by the JSON and the multipart forms)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="The user's message, e.g. 'Please segment the red circle.'")
    history: list[HistoryTurn] = Field(
        default_factory=list,
        description="Earlier turns, oldest first: user, assistant, user, ... ending with an assistant turn.",
    )
    answer_prefix: str | None = Field(
        default=None,
        description="Text the answer is forced to start with, e.g. 'Sure, it is <|seg|>' to force a mask.",
    )
    max_new_tokens: int | None = Field(
        default=None, ge=0, description="Answer token budget after the prefix (server default when absent)."
    )
    return_png: bool = Field(default=False, description="Also return each mask as a base64 PNG (0/255).")
    repetition_stop: bool | None = Field(
        default=None,
        description="Stop the answer when it falls into a degenerate loop (the same n-gram repeating); "
        "finish_reason is then 'repetition'. Server default when absent (on, unless started with "
        "--no-repetition-stop).",
    )


class SegmentJSONRequest(SegmentOptions):
    """`application/json` body of /v1/segment and /v1/segment/stream."""

    image: str = Field(description="The image file, base64-encoded (a `data:image/...;base64,` URL is fine).")


class SegmentMultipartRequest(BaseModel):
    """`multipart/form-data` body of /v1/segment and /v1/segment/stream (documentation only)."""

    image: bytes = Field(json_schema_extra={"format": "binary"}, description="The image file.")
    prompt: str
    history: str | None = Field(default=None, description="JSON list of {role, text} turns.")
    answer_prefix: str | None = None
    max_new_tokens: int | None = None
    return_png: bool = False
    repetition_stop: bool | None = None


class RLE(BaseModel):
    """COCO run-length encoding (compressed `counts` string), decodable with pycocotools."""

    size: list[int] = Field(description="[height, width]")
    counts: str


class MaskResult(BaseModel):
    """One predicted mask; `index` k belongs to the k-th `<|seg|>` of the answer. The same record as in
    `stamp segment`'s result.json (`stamp.outputs.records`), plus `png`."""

    index: int
    phrase: str = Field(
        description="What the mask shows: the words of the answer before its <|seg|>, or what the prompt "
        "asked for where those name nothing ('it', 'the segmentation result', nothing)."
    )
    span: list[int] = Field(
        description="[start, end) of the answer's words before the <|seg|>, in code points."
    )
    color: str = Field(description="Display colour, '#rrggbb' (the overlay palette, in order).")
    area: int = Field(description="Foreground pixels.")
    bbox: list[int] | None = Field(description="[x, y, w, h], null when the mask is empty")
    score: float = Field(description="Mean foreground probability of the cells predicted foreground.")
    grid: list[int] = Field(description="[gh, gw] cells the model classified")
    rle: RLE
    file: str | None = Field(
        default=None, description="The mask's PNG file in the CLI's outputs; always null here."
    )
    png: str | None = Field(default=None, description="base64 PNG (0/255), when return_png")


class ImageInfo(BaseModel):
    width: int
    height: int


FinishReason = Literal["eos", "length", "repetition"]


class BatchInfo(BaseModel):
    size: int = Field(description="How many answers shared the forward passes.")
    timings: dict[str, float] = Field(description="Seconds of the whole batch's shared passes.")


class SegmentResponse(BaseModel):
    """The answer, its masks and where the time went: `StampResult.to_dict()` (the record of `stamp
    segment`'s result.json) with the request's id, image size and batch size."""

    id: str
    prompt: str | None = Field(default=None, description="The request's prompt.")
    text: str = Field(description="The answer; each <|seg|> marks where its mask belongs.")
    finish_reason: FinishReason = Field(
        description="Why the answer ended: 'eos' (the model ended it), 'length' (max_new_tokens ran out: "
        "it may be cut off), 'repetition' (stopped in a degenerate loop)."
    )
    masks: list[MaskResult]
    image: ImageInfo
    batch_size: int = Field(description="How many requests shared this request's forward passes.")
    timings: dict[str, float] = Field(
        description="Seconds: queue, vision, prefill, decode, mask, postprocess, total; of a batch's "
        "shared passes (vision, prefill, decode, mask) this request's equal share (see `batch`)."
    )
    batch: BatchInfo | None = Field(default=None, description="The batch this request was answered in.")


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable, e.g. not_an_image, empty_prompt, upload_too_large.")
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class HealthResponse(BaseModel):
    status: Literal["ok"]
    uptime_s: float
    queue_depth: int
    requests_done: int
    requests_failed: int
    requests_abandoned: int = Field(description="Stopped early: every client of their batch had gone.")
    batches_run: int
    max_batch_seen: int
    mean_batch_size: float
    batch_sizes: dict[str, int] = Field(description="How many batches of each size ran.")


class ModelInfo(BaseModel):
    name: str
    family: str
    random_weights: bool = Field(description="True for the tiny random model (its outputs mean nothing).")
    bundled: bool = Field(
        description="True for the bundled tiny-synth model: small, trained on synthetic shapes only."
    )
    note: str | None = Field(description="What to know about the model (set for the bundled one).")
    parameters: int
    dtype: str
    device: str
    seg_token: str
    image_cells: list[int] = Field(description="[min, max] 28x28 cells an image is resized to.")
    max_batch_size: int
    batch_wait_ms: float
    timeout_s: float
    max_upload_bytes: int
    max_pixels: int = Field(
        description="Most pixels (width x height) of an image: the predictor's max_image_pixels, the limit "
        "the CLI and the Python API apply too; above it 413 too_many_pixels, checked from the header."
    )
    max_prompt_chars: int
    max_prompt_tokens: int | None = Field(
        description="Most text tokens of a request (template, history, prompt, answer prefix; the image's "
        "cells not counted): above it a request is refused with 422 prompt_too_long. Null: no bound."
    )
    max_new_tokens_limit: int


class Sample(BaseModel):
    name: str
    url: str
    width: int
    height: int
    prompts: list[str]


class SamplesResponse(BaseModel):
    samples: list[Sample]
    prompts: list[str] = Field(description="Example prompts that suit any image.")
