"""Server settings: batching, limits and timeouts (one `ServeSettings` per app)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from stamp.inference.options import GenerationConfig


@dataclass
class ServeSettings:
    """Everything `create_app` can be told. Limits refuse a request with a 4xx before it reaches the model."""

    max_batch_size: int = 8
    """Most requests that share one batched generation (1 disables batching)."""
    batch_wait_ms: float = 10.0
    """How long the first request of a batch waits for others to join it."""
    timeout_s: float = 60.0
    """Wall-clock limit of one request, queueing included (504 after it)."""
    max_upload_mb: float = 10.0
    """Largest request body / image file, in MiB (413 above)."""
    max_prompt_chars: int = 2000
    """Longest prompt (and longest history turn or answer prefix), in characters (422 above)."""
    max_history_turns: int = 16
    """Most earlier turns a request may carry."""
    default_max_new_tokens: int = GenerationConfig.max_new_tokens
    """Answer token budget when a request gives none."""
    max_new_tokens_limit: int = 512
    """Largest answer token budget a request may ask for."""
    max_queue: int = 256
    """Most requests waiting for the model; more are refused with 503."""
    web: bool = False
    """Serve the demo page at `/`."""
    model_name: str | None = None
    """What `/v1/model` and the page call the model (default: its folder's name, never its path; "tiny-random"
    for a model built in code)."""

    def __post_init__(self) -> None:
        checks = {
            "max_batch_size": self.max_batch_size >= 1,
            "batch_wait_ms": self.batch_wait_ms >= 0,
            "timeout_s": self.timeout_s > 0,
            "max_upload_mb": self.max_upload_mb > 0,
            "max_prompt_chars": self.max_prompt_chars >= 1,
            "max_history_turns": self.max_history_turns >= 0,
            "default_max_new_tokens": 0 <= self.default_max_new_tokens <= self.max_new_tokens_limit,
            "max_queue": self.max_queue >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"invalid server settings: {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}"
            )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def to_dict(self) -> dict:
        return asdict(self)
