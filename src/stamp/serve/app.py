"""The FastAPI app: `create_app(predictor_or_model, settings)`.

Endpoints: POST /v1/segment (JSON answer), POST /v1/segment/stream (server-sent events), GET /health,
GET /v1/model, GET /v1/samples (+ the sample PNGs), GET /openapi.json, GET /docs (the reference as a
self-contained page), and with `settings.web` the demo page at `/`. One model in memory, driven by one worker thread (`stamp.serve.batching.Batcher`).
"""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from stamp.bundled import NOTE as BUNDLED_NOTE
from stamp.bundled import display_name
from stamp.bundled import is_bundled as is_bundled_model
from stamp.inference.predictor import (
    ChatRequest,
    PredictorOptions,
    PromptTooLongError,
    StampPredictor,
    StampResult,
)
from stamp.model.tokens import SEG_TOKEN
from stamp.outputs.files import result_to_dict
from stamp.outputs.jsondoc import json_ready
from stamp.outputs.records import result_timings
from stamp.serve.batching import Batcher, Job, Overloaded, ShuttingDown
from stamp.serve.docs_page import render_docs_page
from stamp.serve.errors import ApiError, error_responses, install_error_handlers
from stamp.serve.inputs import SegmentInput, read_segment_input
from stamp.serve.samples import GENERIC_PROMPTS, SampleStore
from stamp.serve.schemas import (
    HealthResponse,
    ModelInfo,
    SamplesResponse,
    SegmentJSONRequest,
    SegmentMultipartRequest,
    SegmentResponse,
)
from stamp.serve.settings import ServeSettings
from stamp.serve.stream import TextStreamer, mask_payload, png_base64, sse

API_VERSION = "1.0"
STATIC_DIR = Path(__file__).parent / "static"
DESCRIPTION = (
    "STAMP chats about an image and predicts one whole mask per `<|seg|>` its answer contains. "
    "Requests are queued and dynamically batched; errors are `{error: {code, message}}`."
)
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SegmentJSONRequest"}},
            "multipart/form-data": {"schema": {"$ref": "#/components/schemas/SegmentMultipartRequest"}},
        },
    }
}
_SSE_DOC = {
    200: {
        "description": "Server-sent events: `start`, then `text` ({delta}) as the answer grows, a `mask` "
        "(a MaskResult) right after each `<|seg|>`, and finally `done` ({id, text, finish_reason, masks, "
        "batch_size, timings}) or `error` ({error: {code, message}}).",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


class SegmentService:
    """The model, its batcher and the per-request plumbing shared by the routes."""

    def __init__(self, predictor: StampPredictor, settings: ServeSettings):
        self.predictor, self.settings = predictor, settings
        self.batcher = Batcher(
            lambda reqs, on_event: predictor.chat_batch(reqs, on_event=on_event),
            max_batch_size=settings.max_batch_size,
            batch_wait_s=settings.batch_wait_ms / 1000.0,
            max_queue=settings.max_queue,
        )
        self.started = time.monotonic()
        self.seg_id = predictor.processor.seg_token_id
        try:  # streams decode on the event loop: their own tokenizer, never borrowed by the worker
            self.stream_processor = copy.deepcopy(predictor.processor)
        except Exception:  # noqa: BLE001 - an uncopyable tokenizer: share it (decoding only reads)
            self.stream_processor = predictor.processor

    def submit(self, inp: SegmentInput, on_event=None) -> Job:
        try:  # the predictor's token limit, before the request joins a batch (tokenises only)
            self.predictor.check_prompt(inp.prompt, inp.history, inp.answer_prefix)
        except PromptTooLongError as exc:
            raise ApiError(422, "prompt_too_long", str(exc)) from None
        except ValueError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None
        # a streamed request's masks are refined as they are sent (`events`), not again in its result
        request = ChatRequest(
            inp.image,
            inp.prompt,
            history=inp.history,
            answer_prefix=inp.answer_prefix,
            max_new_tokens=inp.max_new_tokens,
            refine=on_event is None,
            repetition_stop=inp.repetition_stop,
        )
        try:
            return self.batcher.submit(request, on_event)
        except Overloaded as exc:
            raise ApiError(503, "overloaded", f"the server is busy: {exc}") from None
        except ShuttingDown:
            raise ApiError(503, "shutting_down", "the server is shutting down") from None

    def job_error(self, exc: BaseException) -> ApiError:
        if isinstance(exc, ShuttingDown):
            return ApiError(503, "shutting_down", "the server is shutting down")
        return ApiError(500, "internal_error", f"generation failed: {type(exc).__name__}: {exc}")

    def timeout_error(self) -> ApiError:
        return ApiError(
            504, "timeout", f"no answer within the server's limit of {self.settings.timeout_s:g} s"
        )

    def timings(self, result: StampResult, job: Job, t0: float) -> dict[str, float]:
        """The request's queue wait, its answer's timings (`result_timings`: its share of what the batch
        shared) and its total."""
        queue = (job.started or t0) - job.enqueued
        own, _ = result_timings(result.timings, result.batch_size)
        out = {"queue": queue, **own, "total": time.monotonic() - t0}
        return {k: round(v, 6) for k, v in out.items()}

    def response(self, result: StampResult, inp: SegmentInput, job: Job, rid: str, t0: float) -> dict:
        """`result.to_dict()` (the record result.json holds), each mask with its `png` when asked for, and
        the request's id, image size, batch size and timings (`timings`). Strict JSON (`json_ready`)."""
        record = result_to_dict(result, prompt=inp.prompt)
        if inp.return_png:
            for entry, m in zip(record["masks"], result.masks):
                entry["png"] = png_base64(m.mask)
        else:
            for entry in record["masks"]:
                entry["png"] = None
        w, h = inp.image.size
        return json_ready(
            {
                "id": rid,
                **record,
                "image": {"width": w, "height": h},
                "batch_size": job.batch_size,
                "timings": self.timings(result, job, t0),
            }
        )

    def model_info(self) -> dict:
        model, s = self.predictor.model, self.settings
        proc = self.predictor.processor.settings
        source = getattr(model, "name_or_path", "")
        name = s.model_name or (display_name(source) if source else "tiny-random")
        bundled = bool(source) and is_bundled_model(name)
        return {
            "name": str(name),
            "family": str(model.config.model_type),
            "random_weights": not getattr(model, "name_or_path", ""),
            "bundled": bundled,
            "note": BUNDLED_NOTE if bundled else None,
            "parameters": sum(p.numel() for p in model.parameters()),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "device": str(model.device),
            "seg_token": SEG_TOKEN,
            "image_cells": [proc.min_pixels // 784, proc.max_pixels // 784],
            "max_batch_size": s.max_batch_size,
            "batch_wait_ms": s.batch_wait_ms,
            "timeout_s": s.timeout_s,
            "max_upload_bytes": s.max_upload_bytes,
            "max_pixels": self.predictor.max_image_pixels,
            "max_prompt_chars": s.max_prompt_chars,
            "max_prompt_tokens": self.predictor.max_prompt_tokens,
            "max_new_tokens_limit": s.max_new_tokens_limit,
        }

    async def wait(self, job: Job, t0: float) -> StampResult:
        remaining = t0 + self.settings.timeout_s - time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job.future), max(remaining, 0.0))
        except asyncio.TimeoutError:
            job.cancel()
            raise self.timeout_error() from None
        except asyncio.CancelledError:
            job.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - the worker's failure, reported as JSON
            raise self.job_error(exc) from exc

    async def events(self, job: Job, queue: asyncio.Queue, inp: SegmentInput, rid: str, t0: float):
        """The SSE frames of one streamed request (see `_SSE_DOC`)."""
        streamer = TextStreamer(self.stream_processor.decode, self.seg_id)
        w, h = inp.image.size
        refine_s = 0.0
        try:
            yield sse("start", {"id": rid, "image": {"width": w, "height": h}})
            while True:
                remaining = t0 + self.settings.timeout_s - time.monotonic()
                try:
                    event = await asyncio.wait_for(queue.get(), max(remaining, 0.0))
                except asyncio.TimeoutError:
                    job.cancel()
                    yield sse("error", self.timeout_error().to_dict())
                    return
                if event[0] == "token":
                    delta = streamer.push(event[1])
                    if delta:
                        yield sse("text", {"delta": delta})
                elif event[0] == "mask":
                    k, logits = event[1], event[2]
                    t_mask = time.perf_counter()
                    mask = await run_in_threadpool(self.predictor.postprocess_logits, logits, inp.image)
                    refine_s += time.perf_counter() - t_mask
                    payload = await run_in_threadpool(
                        mask_payload, mask, k, streamer.emitted, inp.return_png, inp.prompt
                    )
                    yield sse("mask", payload)
                elif event[0] == "finished":
                    future = job.future
                    if future.cancelled() or future.exception() is not None:
                        exc = future.exception() if not future.cancelled() else ShuttingDown()
                        yield sse("error", self.job_error(exc).to_dict())
                        return
                    result = future.result()
                    tail = streamer.flush()
                    if tail:
                        yield sse("text", {"delta": tail})
                    done = {
                        "id": rid,
                        "text": result.text,
                        "finish_reason": result.finish_reason,
                        "masks": len(result.masks),
                        "batch_size": job.batch_size,
                        "timings": self.timings(result, job, t0),
                    }
                    if self.predictor.refiner is not None:  # done here, per mask, as it streamed out
                        done["timings"]["refine"] = round(refine_s, 6)
                    yield sse("done", done)
                    return
        finally:
            if not job.future.done():
                job.cancel()


def create_app(
    predictor_or_model, settings: ServeSettings | None = None, options: PredictorOptions | None = None
) -> FastAPI:
    """The API (and, with `settings.web`, the demo page) around one model or `StampPredictor`. A model
    is wrapped in `StampPredictor(model, options=options)`; a predictor comes with its own options
    (ValueError when `options` are given as well)."""
    settings = settings or ServeSettings()
    predictor = predictor_or_model
    if not isinstance(predictor, StampPredictor):
        predictor = StampPredictor(predictor_or_model, options=options)
    elif options is not None:
        raise ValueError("create_app: give options with a model; a StampPredictor has its own")
    service = SegmentService(predictor, settings)
    samples = SampleStore()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher.start()
        yield
        await run_in_threadpool(service.batcher.stop)

    app = FastAPI(
        title="STAMP segmentation API",
        version=API_VERSION,
        description=DESCRIPTION,
        docs_url=None,  # Swagger UI would load its assets from a CDN: /docs is a self-contained page
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service
    install_error_handlers(app)
    errors = error_responses(400, 413, 415, 422, 500, 503, 504)

    @app.get("/health", response_model=HealthResponse, tags=["service"])
    async def health() -> dict:
        """Liveness and batching statistics (batches_run, max_batch_seen, ...)."""
        uptime = round(time.monotonic() - service.started, 3)
        return {"status": "ok", "uptime_s": uptime, **service.batcher.stats()}

    @app.get("/v1/model", response_model=ModelInfo, tags=["service"])
    async def model_info() -> dict:
        """What is loaded, and the server's limits."""
        return service.model_info()

    @app.post(
        "/v1/segment", response_model=SegmentResponse, responses=errors, openapi_extra=_BODY, tags=["segment"]
    )
    async def segment(request: Request) -> Response:
        """Answer a prompt about an image; one mask per `<|seg|>` in the answer."""
        t0, rid = time.monotonic(), uuid.uuid4().hex
        inp = await read_segment_input(request, settings, predictor.processor, predictor.max_image_pixels)
        job = service.submit(inp)
        result = await service.wait(job, t0)
        payload = await run_in_threadpool(service.response, result, inp, job, rid, t0)
        return JSONResponse(payload)

    @app.post(
        "/v1/segment/stream",
        responses={**_SSE_DOC, **errors},
        openapi_extra=_BODY,
        response_class=StreamingResponse,
        tags=["segment"],
    )
    async def segment_stream(request: Request) -> StreamingResponse:
        """Like /v1/segment, as server-sent events: text as it is generated, each mask as soon as its
        `<|seg|>` is out. Bad input is still a plain 4xx JSON error, before the stream starts."""
        t0, rid = time.monotonic(), uuid.uuid4().hex
        inp = await read_segment_input(request, settings, predictor.processor, predictor.max_image_pixels)
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()

        def post(*event) -> None:  # from the worker thread
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the loop has closed: nobody listens any more
                pass

        job = service.submit(inp, post)
        job.future.add_done_callback(lambda _: post("finished"))
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(
            service.events(job, queue, inp, rid, t0), media_type="text/event-stream", headers=headers
        )

    @app.get("/v1/samples", response_model=SamplesResponse, tags=["demo"])
    async def list_samples() -> dict:
        """Sample images and example prompts for the bundled model."""
        items = await run_in_threadpool(samples.all)
        return {
            "samples": [
                {
                    "name": s.name,
                    "url": f"/v1/samples/{s.name}.png",
                    "width": s.width,
                    "height": s.height,
                    "prompts": s.prompts,
                }
                for s in items
            ],
            "prompts": GENERIC_PROMPTS,
        }

    @app.get(
        "/v1/samples/{name}.png",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, **error_responses(404, 422)},
        tags=["demo"],
    )
    async def sample_png(name: str) -> Response:
        """One sample image."""
        sample = await run_in_threadpool(samples.get, name)
        if sample is None:
            raise ApiError(404, "not_found", f"no sample named {name!r}")
        return Response(sample.png, media_type="image/png")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        """The API reference: every endpoint, its parameters, bodies and responses, from the OpenAPI
        schema (a page without scripts or outside assets: it works offline)."""
        return HTMLResponse(render_docs_page(app.openapi()))

    if settings.web:
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

        @app.get("/", include_in_schema=False)
        async def index() -> FileResponse:
            return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    else:

        @app.get("/", include_in_schema=False)
        async def root() -> dict:
            return {"name": "stamp", "docs": "/docs", "openapi": "/openapi.json", "health": "/health"}

    app.openapi = lambda: _openapi(app)
    return app


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema plus the two request-body models (the routes read their bodies themselves)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (SegmentJSONRequest, SegmentMultipartRequest):
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in js.pop("$defs", {}).items():
                components.setdefault(name, sub)
            components[model.__name__] = js
        schema["components"]["schemas"] = dict(sorted(components.items()))
        app.openapi_schema = schema
    return app.openapi_schema
