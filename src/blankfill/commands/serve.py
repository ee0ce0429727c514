"""``blankfill serve --model DIR``: the HTTP fill service and its playground page."""

from __future__ import annotations

import argparse
import logging

from ..quantize import PRECISIONS

log = logging.getLogger(__name__)

HELP = "serve blank filling over HTTP (127.0.0.1), with a playground page"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model folder (save_pretrained)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the one in --model)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, auto (default: cpu)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--max-batch", type=int, default=8, help="requests decoded together (1: no batching)"
    )
    p.add_argument(
        "--wait-ms", type=float, default=5.0, help="how long a request waits for others to batch"
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=256,
        help="the most tokens a request may ask per blank",
    )
    p.add_argument("--max-body-kb", type=int, default=64, help="largest request body, in KiB")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="decoding precision (as fill --precision; default auto: bf16 where the machine "
        "has native bf16 and it measures faster, else fp32); fp32 gives exact fills",
    )


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    for flag, value, least in (
        ("--max-batch", args.max_batch, 1),
        ("--wait-ms", args.wait_ms, 0),
        ("--max-new-tokens", args.max_new_tokens, 1),
        ("--max-body-kb", args.max_body_kb, 1),
    ):
        if value < least:
            raise ValueError(f"{flag} must be >= {least}, got {value}")
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ValueError(
            f"blankfill serve needs the serve extra ({e.name} is missing): "
            "pip install 'blankfill[serve]'"
        ) from None
    from ..device import resolve_device
    from ..filling import BlankFiller
    from ..folder import load_model_and_tokenizer
    from ..serve import FillService, Limits, create_app
    from ..serve.server import run_server

    device = resolve_device(args.device, key="--device")
    model, tokenizer = load_model_and_tokenizer(args.model, args.tokenizer, device=device)
    filler = BlankFiller(model, tokenizer, precision=args.precision)
    limits = Limits(max_new_tokens=args.max_new_tokens)
    service = FillService(filler, max_batch=args.max_batch, wait_ms=args.wait_ms, limits=limits)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "serving on %s: reachable from other machines, with no authentication", args.host
        )
    with service:
        app = create_app(service, max_body_bytes=args.max_body_kb * 1024)
        log.info("serving %s on http://%s:%d/", args.model, args.host, args.port)
        run_server(app, host=args.host, port=args.port)
    return 0
