"""`prefstream ingest --port P [--upstream URL] [--host H]`: the ingest API and capture proxy."""
from __future__ import annotations

import logging

from streams.commands import CliError

LOOPBACK = "127.0.0.1"


def register(sub) -> None:
    p = sub.add_parser("ingest", help="HTTP ingest API for prompts and feedback; with --upstream also an "
                                      "OpenAI-compatible proxy that captures production traffic")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    p.add_argument("--host", default=LOOPBACK,
                   help="address to bind (default 127.0.0.1; others need PREFSTREAM_INGEST_KEYS)")
    p.add_argument("--upstream", help="OpenAI-compatible server to forward /v1/chat/completions and /v1/models "
                                      "to (vllm serve, llama.cpp's server, …), e.g. http://127.0.0.1:8000")
    p.set_defaults(fn=cmd_ingest)


def check_bind(host: str, keys: frozenset[str]) -> None:
    if not keys and host != LOOPBACK:
        raise CliError(f"refusing to serve on {host} without API keys: set PREFSTREAM_INGEST_KEYS "
                       f"(comma-separated) or PREFSTREAM_INGEST_KEYS_FILE, or bind --host {LOOPBACK}")


def cmd_ingest(args) -> int:
    import uvicorn

    from streams.commands.serving import uvicorn as serving
    from streams.commands.serving.admission import load_keys
    from streams.endpoints import redact
    from streams.commands.serving.server import build_ingest_app

    settings = args.settings
    settings.brokers  # noqa: B018 - raises a SettingsError naming PREFSTREAM_BROKER when unset
    check_bind(args.host, load_keys(settings))
    if args.upstream and not args.upstream.startswith(("http://", "https://")):
        raise CliError(f"--upstream {redact(args.upstream)!r} must be an http:// or https:// URL")
    app = build_ingest_app(settings, upstream=args.upstream)
    logging.getLogger(__name__).info("ingest on http://%s:%d%s", args.host, args.port,
                                     f", proxying {redact(args.upstream)}" if args.upstream else "")
    uvicorn.Server(serving.config(app, settings, args.host, args.port)).run()
    return 0
