"""API errors: every failure is `{"error": {"code": ..., "message": ...}}` with a fitting status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("stamp.serve")

# status -> the codes it carries (documentation; tests check every one is reachable)
ERROR_CODES: dict[int, tuple[str, ...]] = {
    400: ("invalid_json", "invalid_base64", "invalid_form"),
    404: ("not_found",),
    405: ("method_not_allowed",),
    413: ("upload_too_large", "too_many_pixels"),
    415: ("unsupported_media_type", "not_an_image", "unsupported_image_format", "unsupported_image_mode"),
    422: (
        "invalid_request",
        "missing_image",
        "empty_prompt",
        "prompt_too_long",
        "reserved_token",
        "invalid_history",
        "max_new_tokens_too_large",
    ),
    500: ("internal_error",),
    503: ("overloaded", "shutting_down"),
    504: ("timeout",),
}


class ApiError(Exception):
    """A request the server refuses: `status` and a stable `code`, plus a human `message`."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.to_dict(), status_code=self.status)


def error_responses(*statuses: int) -> dict:
    """`responses=` entries for a route's OpenAPI description."""
    from stamp.serve.schemas import ErrorResponse

    return {
        s: {"model": ErrorResponse, "description": "error codes: " + ", ".join(ERROR_CODES[s])}
        for s in statuses
    }


def install_error_handlers(app: FastAPI) -> None:
    """Turn ApiError, FastAPI's validation errors, HTTP errors and crashes into the JSON error form."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return ApiError(422, "invalid_request", describe_validation(exc.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        return JSONResponse(
            ApiError(exc.status_code, code, message).to_dict(),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return ApiError(500, "internal_error", f"internal error: {type(exc).__name__}").response()


def describe_validation(errors) -> str:
    """One line from pydantic's error list: 'prompt: Field required; max_new_tokens: ...'."""
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"
