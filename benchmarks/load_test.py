"""Load test of the HTTP API on loopback: throughput and latency with and without dynamic batching.

    python benchmarks/load_test.py                          # tiny random model, 8 clients, 15 s per mode
    python benchmarks/load_test.py --model DIR --concurrency 16 --duration 30 --json load.json
    python benchmarks/load_test.py --url http://127.0.0.1:8000   # a running `stamp serve` (one mode)

For each mode ("batched": --max-batch-size, "unbatched": 1) it starts the app in this process on
127.0.0.1 (a free port), lets --concurrency clients send POST /v1/segment back to back for --duration
seconds or --max-requests requests (whichever ends first), then stops the server. Reports
requests/s, p50/p95/p99 latency, errors and the batch sizes the server saw. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import sys
import time
from urllib.parse import urlparse

import numpy as np

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model directory (default: the bundled/tiny model)")
    p.add_argument("--url", default=None, help="test a running server instead (loopback only)")
    p.add_argument("--modes", default="batched,unbatched", help="comma list of batched, unbatched")
    p.add_argument("--concurrency", type=int, default=8, help="clients sending at the same time")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of load per mode (max 300)")
    p.add_argument("--max-requests", type=int, default=1000, help="stop a mode after this many requests")
    p.add_argument("--warmup", type=int, default=4, help="untimed requests first")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--batch-wait-ms", type=float, default=10.0)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--answer-prefix", default="Sure, it is <|seg|>", help="'' for free answers")
    p.add_argument("--image-size", type=int, nargs=2, default=[320, 240], metavar=("W", "H"))
    p.add_argument("--timeout", type=float, default=60.0, help="client timeout per request (s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    if not (0 < args.duration <= 300) or args.max_requests < 1 or args.concurrency < 1:
        p.error("need 0 < --duration <= 300, --max-requests >= 1, --concurrency >= 1")
    if args.url and urlparse(args.url).hostname not in LOOPBACK:
        p.error(f"--url must be a loopback address ({', '.join(sorted(LOOPBACK))}), got {args.url}")
    return args


def make_images(size: tuple[int, int], n: int = 4) -> list[bytes]:
    """A few different PNGs (random pixels), so the server cannot cache anything."""
    from PIL import Image

    out = []
    for seed in range(n):
        rng = np.random.RandomState(seed)
        im = Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype(np.uint8))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


async def run_load(url: str, args, images: list[bytes]) -> dict:
    """Clients send back to back until the time or request budget is spent; returns the numbers."""
    import httpx

    fields = {"prompt": "Please segment the main object.", "max_new_tokens": str(args.max_new_tokens)}
    if args.answer_prefix:
        fields["answer_prefix"] = args.answer_prefix
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout, limits=limits) as http:

        async def one(i: int) -> None:
            files = {"image": (f"{i}.png", images[i % len(images)], "image/png")}
            t0 = time.perf_counter()
            try:
                r = await http.post("/v1/segment", files=files, data=fields)
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    key = f"{r.status_code} {r.json().get('error', {}).get('code', '?')}"
                    errors[key] = errors.get(key, 0) + 1
            except (httpx.HTTPError, ValueError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

        for i in range(args.warmup):
            await one(i)
        latencies.clear()
        errors.clear()
        before = (await http.get("/health")).json()
        end = time.perf_counter() + args.duration

        async def client() -> None:
            nonlocal sent
            while time.perf_counter() < end and sent < args.max_requests:
                sent += 1
                await one(sent)

        t0 = time.perf_counter()
        await asyncio.wait_for(
            asyncio.gather(*(client() for _ in range(args.concurrency))), args.duration + 120
        )
        elapsed = time.perf_counter() - t0
        after = (await http.get("/health")).json()
    batches = after["batches_run"] - before["batches_run"]
    done = after["requests_done"] - before["requests_done"]
    lat = np.array(latencies) * 1000.0
    pct = (lambda q: round(float(np.percentile(lat, q)), 1)) if len(lat) else (lambda q: None)
    return {
        "requests_ok": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "seconds": round(elapsed, 2),
        "throughput_rps": round(len(latencies) / elapsed, 2),
        "latency_ms": {
            "p50": pct(50),
            "p95": pct(95),
            "p99": pct(99),
            "mean": round(float(lat.mean()), 1) if len(lat) else None,
        },
        "server_batches": batches,
        "mean_batch_size": round(done / batches, 2) if batches else 0.0,
        "max_batch_seen": after["max_batch_seen"],
    }


def bench_mode(predictor, mode: str, args, images) -> dict:
    from stamp.serve.app import create_app
    from stamp.serve.server import serve_in_thread
    from stamp.serve.settings import ServeSettings

    size = args.max_batch_size if mode == "batched" else 1
    settings = ServeSettings(
        max_batch_size=size,
        batch_wait_ms=args.batch_wait_ms if mode == "batched" else 0.0,
        default_max_new_tokens=args.max_new_tokens,
        timeout_s=args.timeout,
    )
    with serve_in_thread(create_app(predictor, settings), host="127.0.0.1") as url:
        result = asyncio.run(run_load(url, args, images))
    return {"mode": mode, "max_batch_size": size, "batch_wait_ms": settings.batch_wait_ms, **result}


def main(argv=None) -> int:
    args = parse_args(argv)
    images = make_images(tuple(args.image_size))
    results = []
    if args.url:
        results.append({"mode": "external", **asyncio.run(run_load(args.url.rstrip("/"), args, images))})
    else:
        import torch

        from stamp.bundled import model_name
        from stamp.inference import StampPredictor
        from stamp.processing import load_model_and_processor

        if args.threads:
            torch.set_num_threads(args.threads)
        model, processor = load_model_and_processor(model_name(args.model))
        predictor = StampPredictor(model.to(args.device).eval(), processor)
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            if mode not in ("batched", "unbatched"):
                print(f"unknown mode {mode!r}", file=sys.stderr)
                return 2
            print(f"{mode}: {args.concurrency} clients for up to {args.duration:g} s ...", file=sys.stderr)
            results.append(bench_mode(predictor, mode, args, images))
    header = f"{'mode':<10} {'ok':>6} {'err':>5} {'req/s':>8} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'batch':>6}"
    print(header)
    for r in results:
        lat = r["latency_ms"]
        print(
            f"{r['mode']:<10} {r['requests_ok']:>6} {r['errors']:>5} {r['throughput_rps']:>8.2f} "
            f"{lat['p50'] or 0:>9.1f} {lat['p95'] or 0:>9.1f} {lat['p99'] or 0:>9.1f} {r['mean_batch_size']:>6.2f}"
        )
    meta = {
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "max_new_tokens": args.max_new_tokens,
        "answer_prefix": args.answer_prefix,
        "image_size": args.image_size,
        "model": args.model or "default",
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"settings": meta, "results": results}, fh, indent=2)
            fh.write("\n")
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
