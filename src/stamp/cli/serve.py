"""`stamp serve` (the HTTP API) and `stamp web` (the same app with the demo page at `/`).

Nothing here imports FastAPI until a command runs, so the CLI works without the `serve` extra.
"""

from __future__ import annotations

import errno
import socket
import sys

from stamp.cli.args import (
    EXIT_USAGE,
    Flag,
    add_command,
    add_dataclass_args,
    add_model_args,
    add_predictor_args,
    from_args,
    non_negative_int,
)
from stamp.cli.common import build_predictor

EXAMPLES = {
    "serve": """examples:
  stamp serve                                    # the bundled model on http://127.0.0.1:8000/
  stamp serve --model /models/stamp-2b --device cuda --port 8080
  curl -F image=@photo.png -F prompt="Please segment the red circle." http://127.0.0.1:8000/v1/segment
  stamp serve --openapi > docs/openapi.json      # the API's schema, nothing served

The endpoints and their schemas: http://127.0.0.1:8000/docs (docs/serving.md, docs/openapi.json).""",
    "web": """examples:
  stamp web                                      # then open http://127.0.0.1:8000/ in a browser
  stamp web --model /models/stamp-2b --host 0.0.0.0 --port 8080""",
}
HELP = {
    "serve": "run the HTTP API (POST /v1/segment, /v1/segment/stream, GET /health, /v1/model, /docs)",
    "web": "run the web demo (the HTTP API plus a page at /)",
}


NOT_OPTIONS = ("web", "model_name")
"""`ServeSettings` fields that are no options: `stamp web` sets `web`, --model gives `model_name`."""

SETTINGS_FLAGS = {"default_max_new_tokens": Flag(type=non_negative_int, option="--max-new-tokens")}
"""How `ServeSettings` fields parse where their name and type alone do not say it."""


def add_parser(sub, name: str = "serve"):
    from stamp.serve.settings import ServeSettings

    p = add_command(sub, name, HELP[name], EXAMPLES[name], description=HELP[name])
    add_model_args(p)
    add_predictor_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    add_dataclass_args(p, ServeSettings, exclude=NOT_OPTIONS, title="server settings", **SETTINGS_FLAGS)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level: info (default) logs each request",
    )
    if name == "serve":
        p.add_argument(
            "--openapi", action="store_true", help="print the API's OpenAPI schema (JSON) and exit"
        )
    return p


def add_web_parser(sub):
    return add_parser(sub, "web")


def settings_from_args(args, *, web: bool):
    """`ServeSettings` from parsed arguments (ValueError on a bad value). Clients are shown the model's
    name (the bundled model's, or its folder's), never its path on this machine."""
    from stamp.bundled import display_name
    from stamp.serve.settings import ServeSettings

    return from_args(ServeSettings, args, web=web, model_name=display_name(args.model))


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


def _serve(args, *, web: bool) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        print("stamp: error: serving needs the serve extra: pip install 'stamp-seg[serve]'", file=sys.stderr)
        return EXIT_USAGE
    if getattr(args, "openapi", False):
        from stamp.serve.openapi import render

        sys.stdout.write(render())
        return 0
    import torch

    from stamp.refine import check_refine_source
    from stamp.serve.app import create_app

    settings = settings_from_args(args, web=web)
    check_refine_source(args.refine)
    problem = port_problem(args.host, args.port)
    if problem:  # before the model loads and before any URL is printed
        print(f"stamp: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.threads:
        torch.set_num_threads(args.threads)
    app = create_app(build_predictor(args), settings)
    what = "web demo" if web else "API"
    print(f"stamp: {what} on http://{args.host}:{args.port}/ (Ctrl-C to stop)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def run(args) -> int:
    """`stamp serve`: the HTTP API."""
    return _serve(args, web=False)


def run_web(args) -> int:
    """`stamp web`: the HTTP API with the demo page at `/`."""
    return _serve(args, web=True)
