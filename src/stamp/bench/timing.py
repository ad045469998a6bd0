"""Timing and peak-memory primitives shared by the benchmarks.

Rules (docs/PERFORMANCE.md, "Measuring speed honestly"): warm up first, repeat, report the median with
its spread (min, max, interquartile range), set the thread count explicitly, and synchronise CUDA before
reading the clock.

Peak memory:
- CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, minus what was allocated
  before the measured call (the tensors the call itself needed at its peak).
- CPU: the process's peak resident set size (`VmHWM` in /proc/self/status) is a *high-water mark*: it
  only ever grows. Before each measured call it is reset to the current RSS by writing "5" to
  /proc/self/clear_refs (Linux >= 4.0); the figure is then VmHWM after the call minus VmRSS before it.
  Freed heap memory that the allocator keeps would hide the call's own allocations (they reuse pages
  already resident), so glibc's `malloc_trim(0)` first returns free pages to the system.
  Where the reset is refused, the delta of the un-reset high-water mark is reported instead, which is 0
  whenever an earlier call peaked higher (`PeakMemory.exact` says which). RSS counts every allocation of
  the process (torch's, numpy's, the allocator's retained pages), so it is an upper bound on the tensors.
"""

from __future__ import annotations

import ctypes
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_LIBC = None


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Milliseconds of repeated runs of one call (and, if tracked, the peak memory of the first run)."""

    median_ms: float
    min_ms: float
    max_ms: float
    q1_ms: float
    q3_ms: float
    repeats: int
    samples_ms: list[float]
    peak_mem: PeakMemory | None = None

    @classmethod
    def from_samples(cls, samples_ms: list[float], peak_mem: PeakMemory | None = None) -> Timing:
        if not samples_ms:
            raise ValueError("no timing samples")
        ordered = sorted(samples_ms)
        if len(ordered) >= 2:
            q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        else:
            q1 = q3 = ordered[0]
        return cls(
            median_ms=statistics.median(ordered),
            min_ms=ordered[0],
            max_ms=ordered[-1],
            q1_ms=q1,
            q3_ms=q3,
            repeats=len(ordered),
            samples_ms=list(samples_ms),
            peak_mem=peak_mem,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def spread(self) -> str:
        """'median [min-max]' for tables."""
        return f"{self.median_ms:.2f} [{self.min_ms:.2f}-{self.max_ms:.2f}]"


def measure(
    fn: Callable[[], object],
    *,
    device: torch.device | str = "cpu",
    repeats: int = 5,
    warmup: int = 1,
    budget_s: float | None = None,
    warmup_fn: Callable[[], object] | None = None,
    track_memory: bool = False,
) -> Timing:
    """Time `fn()` `repeats` times after `warmup` untimed calls (of `warmup_fn` if given).

    `budget_s`: stop repeating once the timed runs have used this many seconds (at least one run is
    always timed), so that a slow baseline (e.g. 4096 autoregressive steps) does not dominate a run.
    `track_memory`: record the peak memory of the first timed run (`Timing.peak_mem`); the bookkeeping
    happens outside the timed interval.
    """
    for _ in range(warmup):
        (warmup_fn or fn)()
    synchronize(device)
    samples: list[float] = []
    peak = None
    spent = 0.0
    for i in range(max(1, repeats)):
        ms, probed = _timed_call(fn, device, track_memory and i == 0)
        if i == 0:
            peak = probed
        samples.append(ms)
        spent += ms / 1e3
        if budget_s is not None and spent >= budget_s:
            break
    return Timing.from_samples(samples, peak)


def _timed_call(fn: Callable[[], object], device, track_memory: bool) -> tuple[float, PeakMemory | None]:
    """One synchronised call of `fn`: (milliseconds, its peak memory when `track_memory`, else None)."""
    probe = MemoryProbe(device) if track_memory else None
    if probe is not None:
        probe.start()
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    ms = (time.perf_counter() - t0) * 1e3
    return ms, (probe.stop() if probe is not None else None)


def measure_alternating(
    fns: dict[str, Callable[[], object]],
    *,
    device: torch.device | str = "cpu",
    repeats: int = 5,
    warmup: int = 1,
    track_memory: bool = False,
) -> dict[str, Timing]:
    """`measure` for several calls whose ratio matters, their repeats alternating (a b a b ...): load
    from other processes that comes and goes then falls on all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    peaks: dict[str, PeakMemory | None] = {name: None for name in fns}
    for i in range(max(1, repeats)):
        for name, fn in fns.items():
            ms, peak = _timed_call(fn, device, track_memory and i == 0)
            samples[name].append(ms)
            if i == 0:
                peaks[name] = peak
    return {name: Timing.from_samples(samples[name], peaks[name]) for name in fns}


def _status_kb(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    """Give the C heap's free pages back to the OS (glibc only; a no-op elsewhere)."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def _reset_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


@dataclass
class PeakMemory:
    """Peak memory of one call above what was in use before it, in MiB."""

    peak_mb: float | None  # None when no method is available
    method: str  # "cuda_max_memory_allocated" | "rss_hwm_reset" | "rss_hwm" | "unavailable"
    exact: bool  # False when the figure is a lower bound (high-water mark not reset)


class MemoryProbe:
    """`start()` before a call, `stop() -> PeakMemory` after it (see the module docstring)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.before: int | None = None
        self.exact = False

    def start(self) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
            return
        _malloc_trim()
        self.exact = _reset_hwm()
        self.before = _status_kb("VmRSS") if self.exact else _status_kb("VmHWM")

    def stop(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - (self.before or 0)
            return PeakMemory(peak / 2**20, "cuda_max_memory_allocated", True)
        after = _status_kb("VmHWM")
        if self.before is None or after is None:
            return PeakMemory(None, "unavailable", False)
        method = "rss_hwm_reset" if self.exact else "rss_hwm"
        return PeakMemory(max(0, after - self.before) / 1024, method, self.exact)


def resident_bytes(device: torch.device | str = "cpu") -> int | None:
    """Memory in use now: CUDA's allocated tensors, or the process's resident set (None if unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    kb = _status_kb("VmRSS")
    return None if kb is None else kb * 1024


def peak_memory(fn: Callable[[], object], device: torch.device | str = "cpu") -> PeakMemory:
    """Run `fn()` once and report its peak memory."""
    probe = MemoryProbe(device)
    probe.start()
    fn()
    return probe.stop()
