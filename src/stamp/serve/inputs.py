"""Reading a segmentation request: the body (size-limited), JSON or multipart, the image, the texts.

Everything wrong with a request becomes an `ApiError` (a 4xx with a code saying what is wrong) before
the request reaches the model.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from stamp.data.sample import HistoryError, Turn, parse_history
from stamp.imaging import DEFAULT_MAX_IMAGE_PIXELS, ImageError, ImageTooLargeError, load_image
from stamp.imaging.load import check_pixels
from stamp.model.tokens import QWEN_SPECIAL_TOKENS, SEG_TOKEN, STAMP_TOKENS
from stamp.serve.errors import ApiError, describe_validation
from stamp.serve.schemas import SegmentJSONRequest, SegmentOptions
from stamp.serve.settings import ServeSettings

# Formats a client may send (Pillow can read more, e.g. EPS or PSD; they are refused with 415).
ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP", "BMP", "GIF", "TIFF", "PPM"})
# Pixel modes `stamp.imaging.load_image` turns into RGB faithfully (e.g. LAB or HSV are refused).
ALLOWED_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "I", "F"}
    | {"I;16", "I;16B", "I;16L", "I;16N"}
)
RESERVED_TOKENS = (*QWEN_SPECIAL_TOKENS, *STAMP_TOKENS)
FORM_OVERHEAD = 1024 * 1024  # room for the text fields next to the image


@dataclass
class SegmentInput:
    """A validated request, ready for the model."""

    image: Image.Image
    prompt: str
    history: list[Turn] = field(default_factory=list)
    answer_prefix: str | None = None
    max_new_tokens: int = 128
    return_png: bool = False
    repetition_stop: bool | None = None


async def read_segment_input(
    request: Request, settings: ServeSettings, processor, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> SegmentInput:
    """Parse and check a /v1/segment body; raise `ApiError` for anything wrong with it. `max_pixels`:
    the predictor's `max_image_pixels` (the one image size limit, shared with the API and the CLI)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        limit = settings.max_upload_bytes * 4 // 3 + FORM_OVERHEAD
        options, data = _parse_json(await _read_body(request, limit))
    elif ctype == "multipart/form-data":
        limit = settings.max_upload_bytes + FORM_OVERHEAD
        options, data = await _parse_multipart(request, await _read_body(request, limit))
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send application/json (base64 image) or multipart/form-data, not {ctype or 'no content type'}",
        )
    if len(data) > settings.max_upload_bytes:
        raise ApiError(
            413,
            "upload_too_large",
            f"the image is {len(data)} bytes; the limit is {settings.max_upload_bytes} bytes",
        )
    seg_input = check_options(options, settings, processor)
    seg_input.image = await run_in_threadpool(decode_image, data, max_pixels)
    return seg_input


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) one over `limit` bytes without reading all of it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413, "upload_too_large", f"the request is {declared} bytes; the limit is {limit} bytes"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "upload_too_large", f"the request is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_json(body: bytes) -> tuple[SegmentOptions, bytes]:
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    if not obj.get("image"):
        raise ApiError(422, "missing_image", "no image: give `image` as a base64 string")
    try:
        req = SegmentJSONRequest.model_validate(obj)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", describe_validation(exc.errors())) from None
    text = req.image
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_base64", "`image` is not valid base64") from None
    return SegmentOptions.model_validate(req.model_dump(exclude={"image"})), data


async def _parse_multipart(request: Request, body: bytes) -> tuple[SegmentOptions, bytes]:
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
    except (MultiPartException, HTTPException) as exc:  # Starlette turns the former into the latter
        message = getattr(exc, "message", None) or getattr(exc, "detail", "")
        raise ApiError(400, "invalid_form", f"cannot parse the multipart form: {message}") from None
    try:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "missing_image", "no image: upload the file in a form field named `image`")
        data = await upload.read()
        fields = {k: v for k, v in form.multi_items() if k != "image"}
    finally:
        await form.close()
    if any(not isinstance(v, str) for v in fields.values()):
        raise ApiError(422, "invalid_request", "only `image` may be a file")
    if "history" in fields:
        try:
            fields["history"] = json.loads(fields["history"]) if fields["history"].strip() else []
        except json.JSONDecodeError:
            raise ApiError(422, "invalid_history", "`history` must be a JSON list of {role, text}") from None
    for key in ("answer_prefix", "max_new_tokens", "repetition_stop"):
        if fields.get(key) == "":
            fields.pop(key)
    try:
        return SegmentOptions.model_validate(fields), data
    except ValidationError as exc:
        code = "invalid_history" if any(e["loc"][:1] == ("history",) for e in exc.errors()) else None
        raise ApiError(422, code or "invalid_request", describe_validation(exc.errors())) from None


def check_options(options: SegmentOptions, settings: ServeSettings, processor) -> SegmentInput:
    """Check the texts and budgets of a request against the settings (image not yet decoded)."""
    limit = settings.max_prompt_chars
    prompt = options.prompt
    if not prompt.strip():
        raise ApiError(422, "empty_prompt", "the prompt is empty")
    if len(prompt) > limit:
        raise ApiError(
            422, "prompt_too_long", f"the prompt has {len(prompt)} characters; the limit is {limit}"
        )
    _check_reserved(processor, prompt, "the prompt")
    if len(options.history) > settings.max_history_turns:
        raise ApiError(
            422,
            "invalid_history",
            f"{len(options.history)} history turns; the limit is {settings.max_history_turns}",
        )
    try:  # the one history rule, shared with the Python API and the command line
        history = parse_history([t.model_dump() for t in options.history])
    except HistoryError as exc:
        raise ApiError(422, "invalid_history", str(exc)) from None
    for i, turn in enumerate(history):
        if len(turn.text) > limit:
            raise ApiError(422, "prompt_too_long", f"history turn {i} has over {limit} characters")
        if turn.role == "user":
            _check_reserved(processor, turn.text, f"history turn {i}")
    prefix = options.answer_prefix or None
    if prefix is not None:
        if len(prefix) > limit:
            raise ApiError(422, "prompt_too_long", f"the answer prefix has over {limit} characters")
        _check_reserved(processor, prefix.replace(SEG_TOKEN, ""), "the answer prefix")
    budget = settings.default_max_new_tokens if options.max_new_tokens is None else options.max_new_tokens
    if budget > settings.max_new_tokens_limit:
        raise ApiError(
            422,
            "max_new_tokens_too_large",
            f"max_new_tokens is {budget}; the limit is {settings.max_new_tokens_limit}",
        )
    return SegmentInput(
        None,  # type: ignore[arg-type]
        prompt,
        history,
        prefix,
        budget,
        options.return_png,
        options.repetition_stop,
    )


def _check_reserved(processor, text: str, what: str) -> None:
    """Control tokens typed by a client would corrupt the conversation (an `<|image_pad|>` too many,
    a `<|seg|>` in a question): refuse them. The fixed list covers tokenizers that do not register
    them all as special; the processor's own check covers the rest."""
    for tok in RESERVED_TOKENS:
        if tok in text:
            raise ApiError(422, "reserved_token", f"{what} contains the reserved token {tok}")
    try:
        processor.check_user_text(text)
    except ValueError as exc:
        message = f"{what}: {exc}".replace("the prompt contains", "contains")
        raise ApiError(422, "reserved_token", message) from None


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode uploaded bytes into an RGB image; refuse non-images, odd formats/modes and bombs.

    The pixel count is checked from the header before any pixel is decoded, against `max_pixels` and
    Pillow's own `Image.MAX_IMAGE_PIXELS` (whichever is smaller), so Pillow's DecompressionBombWarning
    can never pass silently; its DecompressionBombError is a 413 as well.
    """
    if not data:
        raise ApiError(415, "not_an_image", "the uploaded image is empty (0 bytes)")
    limit = max_pixels if Image.MAX_IMAGE_PIXELS is None else min(max_pixels, Image.MAX_IMAGE_PIXELS)
    bomb = (Image.DecompressionBombError, Image.DecompressionBombWarning)
    try:
        with Image.open(io.BytesIO(data)) as im:
            try:
                check_pixels(im.size, limit)
            except ImageTooLargeError as exc:
                raise ApiError(413, "too_many_pixels", str(exc)) from None
            if im.format not in ALLOWED_FORMATS:
                raise ApiError(
                    415,
                    "unsupported_image_format",
                    f"{im.format} images are not accepted; send one of {', '.join(sorted(ALLOWED_FORMATS))}",
                )
            if im.mode not in ALLOWED_MODES:
                raise ApiError(
                    415,
                    "unsupported_image_mode",
                    f"images in mode {im.mode} are not supported; send RGB or grey",
                )
            im.load()
            return load_image(im, limit)
    except bomb:
        raise ApiError(413, "too_many_pixels", "the image has too many pixels (decompression bomb)") from None
    except UnidentifiedImageError:
        raise ApiError(
            415, "not_an_image", "the upload is not an image (cannot identify its format)"
        ) from None
    except (ImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ApiError(415, "not_an_image", f"the image cannot be decoded: {exc}") from None
