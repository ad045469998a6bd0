"""`stamp serve` (the HTTP API) and `stamp web` (the same app with the demo page at `/`).

Wired into `stamp.cli` / `stamp.commands` with `add_parsers(sub, _Parser)` and `COMMANDS`. Nothing
here imports FastAPI until a command runs, so the CLI works without the `serve` extra.
"""

from __future__ import annotations

import argparse
import errno
import socket
import sys

from stamp.arguments import (
    REFINE_METAVAR,
    HelpFormatter,
    check_refine_source,
    int_pair,
    probability,
    refine_spec,
)

EXIT_USAGE = 2


EXAMPLES = {
    "serve": """examples:
  stamp serve                                    # the bundled model on http://127.0.0.1:8000/
  stamp serve --model /models/stamp-2b --device cuda --port 8080
  curl -F image=@photo.png -F prompt="Please segment the red circle." http://127.0.0.1:8000/v1/segment

The endpoints and their schemas: http://127.0.0.1:8000/docs (docs/serving.md, docs/openapi.json).""",
    "web": """examples:
  stamp web                                      # then open http://127.0.0.1:8000/ in a browser
  stamp web --model /models/stamp-2b --host 0.0.0.0 --port 8080""",
}


def add_parsers(subparsers, parser_class: type[argparse.ArgumentParser] | None = None) -> None:
    """Add the `serve` and `web` subcommands to the `stamp` subparsers.

    `parser_class` is the CLI's parser class; the subparsers action already creates parsers of it, so
    it is only checked here for symmetry with the other commands.
    """
    for name, help_text, port in (
        ("serve", "run the HTTP API (POST /v1/segment, /v1/segment/stream, GET /health, /v1/model)", 8000),
        ("web", "run the web demo (the HTTP API plus a page at /)", 8000),
    ):
        p = subparsers.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EXAMPLES[name],
            formatter_class=HelpFormatter,
        )
        if parser_class is not None and not isinstance(p, parser_class):  # pragma: no cover
            raise TypeError(f"expected a {parser_class.__name__} parser")
        add_serve_arguments(p, default_port=port)


def add_serve_arguments(p: argparse.ArgumentParser, default_port: int = 8000) -> None:
    """The options shared by `stamp serve` and `stamp web`."""
    from stamp.serve.config import ServeSettings

    d = ServeSettings()
    p.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    p.add_argument("--base-model", default=None, help="base model directory for a LoRA adapter checkpoint")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="weights dtype")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0 ...")
    p.add_argument(
        "--threshold",
        type=probability,
        default=None,
        help="foreground probability threshold in (0, 1) (default: the model's calibrated mask_threshold, "
        "else 0.5)",
    )
    p.add_argument(
        "--cells",
        type=int_pair,
        default=None,
        metavar="MIN,MAX",
        help="image size in 28x28 cells, overriding the checkpoint's processor settings",
    )
    p.add_argument(
        "--refine",
        type=refine_spec,
        default="auto",
        metavar=REFINE_METAVAR,
        help="sub-patch refinement (default auto: guided for the bundled model, none for others; "
        "PATH: a transformers SAM folder or an original SAM checkpoint file)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=default_port, help=f"port (default {default_port})")
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=d.max_batch_size,
        help=f"requests per batched generation; 1 disables batching (default {d.max_batch_size})",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=d.batch_wait_ms,
        help=f"how long a request waits for others to batch with (default {d.batch_wait_ms:g})",
    )
    p.add_argument(
        "--timeout-s",
        type=float,
        default=d.timeout_s,
        help=f"per-request time limit (default {d.timeout_s:g})",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=d.max_upload_mb,
        help=f"largest image upload in MiB (default {d.max_upload_mb:g})",
    )
    p.add_argument(
        "--max-pixels", type=int, default=d.max_pixels, help=f"largest image, w x h (default {d.max_pixels})"
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=d.default_max_new_tokens,
        help=f"default answer token budget (default {d.default_max_new_tokens})",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level: info (default) logs each request",
    )


def settings_from_args(args, *, web: bool):
    """`ServeSettings` from parsed arguments (ValueError on a bad value)."""
    from stamp.serve.config import ServeSettings

    return ServeSettings(
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        timeout_s=args.timeout_s,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        default_max_new_tokens=args.max_new_tokens,
        web=web,
        model_name=args.model,
    )


def _run(args, *, web: bool) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        print("stamp: error: serving needs the serve extra: pip install 'stamp-seg[serve]'", file=sys.stderr)
        return EXIT_USAGE
    import torch

    from stamp.inference import StampPredictor
    from stamp.models import load_model, resolve_refine
    from stamp.serve.app import create_app

    settings = settings_from_args(args, web=web)
    check_refine_source(args.refine)
    problem = port_problem(args.host, args.port)
    if problem:  # before the model loads and before any URL is printed
        print(f"stamp: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, dtype=args.dtype, device=args.device, base_model=args.base_model)
    if args.cells is not None:
        model.processor.set_cell_range(*args.cells)
    refine = resolve_refine(getattr(args, "refine", "auto"), model)
    app = create_app(StampPredictor(model, threshold=args.threshold, refine=refine), settings)
    what = "web demo" if web else "API"
    print(f"stamp: {what} on http://{args.host}:{args.port}/ (Ctrl-C to stop)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def port_problem(host: str, port: int) -> str | None:
    """Why the server could not listen on (host, port) -- in use, not permitted, no such address -- or
    None. Binds a socket the way uvicorn does (SO_REUSEADDR) and closes it at once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is already in use; choose another with --port"
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def cmd_serve(args) -> int:
    """`stamp serve`: the HTTP API."""
    return _run(args, web=False)


def cmd_web(args) -> int:
    """`stamp web`: the HTTP API with the demo page at `/`."""
    return _run(args, web=True)


COMMANDS = {"serve": cmd_serve, "web": cmd_web}
