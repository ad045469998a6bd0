"""Dynamic batching: one worker thread owns the model and runs queued requests together.

Requests wait in a bounded queue. The worker takes the oldest one and lets others join it until the
batch is full (`max_batch_size`) or the oldest has waited `batch_wait_ms`; the batch then runs as ONE
batched generation (`StampPredictor.chat_batch`), so concurrent clients share every forward pass.
Requests whose client has gone (timed out, disconnected) before their batch starts are skipped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from stamp.inference.predictor import ChatRequest, StampResult

log = logging.getLogger("stamp.serve")

RunBatch = Callable[[Sequence[ChatRequest], Callable[..., None]], list[StampResult]]


class Overloaded(RuntimeError):
    """The queue is full."""


class ShuttingDown(RuntimeError):
    """The batcher has stopped."""


class Abandoned(RuntimeError):
    """Every client of a running batch has gone: its generation is stopped early."""


@dataclass
class Job:
    """One queued request. `future` gets the `StampResult` (or the exception); `on_event`, if given, is
    called from the worker thread with ("token", token_id) and ("mask", k, logits) as they happen."""

    request: ChatRequest
    on_event: Callable[..., None] | None = None
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)
    started: float | None = None
    batch_size: int = 0
    emitted: bool = False
    abandoned: bool = False

    def cancel(self) -> None:
        """The client no longer waits: skip the job if it has not started, mute its events if it has
        (and once every job of its batch is abandoned, the batch's generation stops at the next token)."""
        self.abandoned = True
        self.future.cancel()
        self.on_event = None

    def emit(self, *event) -> None:
        self.emitted = True
        callback = self.on_event
        if callback is not None:
            try:
                callback(*event)
            except Exception:  # a listener's failure must not break the batch
                log.exception("event listener failed")
                self.on_event = None


_STOP = object()


class Batcher:
    """Queue + worker thread. `submit()` from any thread; `start()` is implicit; `stop()` to shut down."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int = 8,
        batch_wait_s: float = 0.01,
        max_queue: int = 256,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.batches_run = 0
        self.requests_done = 0
        self.requests_failed = 0
        self.requests_abandoned = 0
        self.max_batch_seen = 0
        self.batch_sizes: Counter[int] = Counter()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        with self._lock:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="stamp-batcher", daemon=True)
                self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Finish the running batch, fail everything still queued with `ShuttingDown`, end the thread."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        if thread is not None:
            self._put_stop()
            thread.join(timeout)
        self._drain()

    def _put_stop(self) -> None:
        while True:
            try:
                self._queue.put_nowait(_STOP)
                return
            except queue.Full:
                self._drain()

    def _drain(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(job, Job) and job.future.set_running_or_notify_cancel():
                job.future.set_exception(ShuttingDown("the server is shutting down"))

    # ------------------------------------------------------------------ submitting
    def submit(self, request: ChatRequest, on_event: Callable[..., None] | None = None) -> Job:
        """Queue `request`; raises `Overloaded` when the queue is full, `ShuttingDown` after `stop()`."""
        self.start()
        job = Job(request, on_event)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Overloaded(f"{self._queue.maxsize} requests are already waiting; try again later") from None
        return job

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def stats(self) -> dict:
        batches = sum(self.batch_sizes.values())
        return {
            "queue_depth": self.queue_depth,
            "requests_done": self.requests_done,
            "requests_failed": self.requests_failed,
            "requests_abandoned": self.requests_abandoned,
            "batches_run": self.batches_run,
            "max_batch_seen": self.max_batch_seen,
            "mean_batch_size": round(sum(k * v for k, v in self.batch_sizes.items()) / batches, 3)
            if batches
            else 0.0,
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
        }

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            if first.future.cancelled():
                continue
            batch, stop = self._gather(first)
            self._run([j for j in batch if j.future.set_running_or_notify_cancel()])
            if stop:
                return

    def _gather(self, first: Job) -> tuple[list[Job], bool]:
        """The oldest job plus whatever joins before the batch is full or the first has waited enough."""
        batch = [first]
        deadline = first.enqueued + self.batch_wait_s
        while len(batch) < self.max_batch_size:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    job = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if job is _STOP:
                return batch, True
            if not job.future.cancelled():  # a client that gave up takes no place in the batch
                batch.append(job)
        return batch, False

    def _run(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        now = time.monotonic()
        for job in jobs:
            job.started, job.batch_size = now, len(jobs)

        def dispatch(kind: str, row: int, *payload) -> None:
            if all(j.abandoned for j in jobs):
                raise Abandoned(f"all {len(jobs)} clients of the batch have gone")
            jobs[row].emit(kind, *payload)

        try:
            results = self.run_batch([j.request for j in jobs], dispatch)
        except Abandoned as exc:
            self._record(len(jobs))
            self.requests_abandoned += len(jobs)
            for job in jobs:
                job.future.set_exception(exc)
            return
        except Exception as exc:  # noqa: BLE001 - reported to the waiting clients
            self._record(len(jobs))
            if len(jobs) > 1:
                log.warning("a batch of %d failed (%s); retrying its requests one by one", len(jobs), exc)
            for job in jobs:
                if len(jobs) > 1 and not job.emitted:  # isolate the culprit: run each on its own
                    self._run([job])
                else:  # alone already, or its client has seen part of an answer: no second one
                    self.requests_failed += 1
                    job.future.set_exception(exc)
            return
        self._record(len(jobs))
        for job, result in zip(jobs, results):
            self.requests_done += 1
            job.future.set_result(result)

    def _record(self, size: int) -> None:
        self.batches_run += 1
        self.batch_sizes[size] += 1
        self.max_batch_seen = max(self.max_batch_seen, size)
