"""The ``prefstream`` command line."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

import msgspec

from streams.settings import Settings, SettingsError, load

logger = logging.getLogger("prefstream")


def wait_for_stop() -> None:
    """Block until SIGINT or SIGTERM (the mask is left alone, so child processes keep
    their default signal handling)."""
    import threading

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(3600):
        pass


def _settings(args) -> Settings:
    return load(config_file=getattr(args, "config", None))


def cmd_broker(args) -> int:
    from streams.broker import EmbeddedBroker

    with EmbeddedBroker(port=args.port) as b:
        print(b.address, flush=True)
        wait_for_stop()
    return 0


def cmd_worker(args) -> int:
    import faust

    from streams.app import AGENTS, build_app

    settings = _settings(args)
    settings.brokers  # noqa: B018 - raises a SettingsError naming PREFSTREAM_BROKER when unset
    agents = tuple(a.strip() for a in args.agents.split(",")) if args.agents else AGENTS
    if args.metrics_port is not None:
        settings = settings.replace(metrics_port=args.metrics_port)
    from streams.admin import create_topics
    from streams.topics import from_settings

    asyncio.run(create_topics(settings, from_settings(settings)))
    app = build_app(settings, agents)
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True)
    worker.execute_from_commandline()
    return 0


def cmd_submit(args) -> int:
    from streams.admin import create_topics, producer
    from streams.inputs import read_prompts
    from streams.topics import from_settings

    settings = _settings(args)
    topics = from_settings(settings)
    prompts = list(read_prompts(args.file, args.limit))

    async def go() -> None:
        await create_topics(settings, topics)
        p = producer(settings)
        await p.start()
        try:
            for pr in prompts:
                if args.objective:
                    pr = msgspec.structs.replace(pr, objective=args.objective)
                await p.send(topics.prompts.name, topics.prompts.codec.encode(pr), key=pr.id.encode())
            await p.flush()
        finally:
            await p.stop()

    asyncio.run(go())
    print(f"submitted {len(prompts)} prompts to {topics.prompts.name}")
    return 0


def cmd_tap(args) -> int:
    from streams.tap import tap
    from streams.topics import from_settings

    settings = _settings(args)
    settings.brokers  # noqa: B018
    stop = asyncio.Event()

    async def go() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await tap(settings, from_settings(settings), args.out, stop)

    n = asyncio.run(go())
    print(f"wrote {n} new records to {Path(args.out) / 'preferences.jsonl'}")
    return 0


def _objective(args):
    from streams.objectives import load_objective

    spec = load_objective(args.objective)
    if getattr(args, "candidates", None):
        spec = msgspec.structs.replace(spec, synthesis=msgspec.structs.replace(spec.synthesis,
                                                                               candidates=args.candidates))
    return spec


def cmd_run(args) -> int:
    from streams.inputs import read_prompts
    from streams.run import run

    settings = _settings(args)
    spec = _objective(args)
    prompts = list(read_prompts(args.input, args.limit))
    env = dict(os.environ)
    if args.config:
        env["PREFSTREAM_CONFIG"] = str(Path(args.config).resolve())
    result = run(settings, prompts, spec, Path(args.out), env=env, progress=not args.quiet)
    print(json.dumps(result, indent=2))
    return 0


def cmd_up(args) -> int:
    """The whole system as a service on the embedded broker: broker + one worker, until ^C."""
    from streams.broker import EmbeddedBroker
    from streams.run import publish_objective, start_worker, stop_process
    from streams.admin import create_topics
    from streams.topics import from_settings

    settings = _settings(args)
    out = Path(settings.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    broker = None if settings.broker else EmbeddedBroker(port=args.port, log_path=out / "broker.log").start()
    if broker:
        settings = settings.replace(broker=broker.address)
    worker = None
    try:
        topics = from_settings(settings)
        asyncio.run(create_topics(settings, topics))
        asyncio.run(publish_objective(settings, topics, _objective(args)))
        worker = start_worker(settings, settings.broker, out / "worker.log", dict(os.environ))
        print(f"prefstream up: broker {settings.broker}, namespace {settings.namespace}; "
              f"submit with PREFSTREAM_BROKER={settings.broker} prefstream submit FILE; ^C stops", flush=True)
        wait_for_stop()
    finally:
        stop_process(worker)
        if broker:
            broker.stop()
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prefstream", description="Turn a live stream of prompts into preference data.")
    p.add_argument("--config", help="settings file (YAML); PREFSTREAM_* variables override it")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="one-shot: every stage over an input file, on the embedded broker")
    r.add_argument("--input", required=True, help="JSONL prompts (GSM8K, IFEval, chat or plain lines)")
    r.add_argument("--objective", help="objective YAML (default: the bundled default objective)")
    r.add_argument("--limit", type=int, help="only the first N prompts")
    r.add_argument("--candidates", type=int, help="candidates per prompt (overrides the objective)")
    r.add_argument("--out", required=True, help="output directory")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(fn=cmd_run)

    u = sub.add_parser("up", help="the whole system as a long-running service on the embedded broker")
    u.add_argument("--objective", help="objective YAML to publish at start")
    u.add_argument("--port", type=int, help="broker port (default: a free one)")
    u.set_defaults(fn=cmd_up)

    w = sub.add_parser("worker", help="run agents against PREFSTREAM_BROKER")
    w.add_argument("--agents", help="comma-separated subset of curate,synthesize,evaluate,instantiate")
    w.add_argument("--metrics-port", type=int, help="serve /metrics on 127.0.0.1:PORT (0 = off)")
    w.set_defaults(fn=cmd_worker)

    s = sub.add_parser("submit", help="produce prompts from a JSONL file")
    s.add_argument("file")
    s.add_argument("--limit", type=int)
    s.add_argument("--objective", help="route every prompt to this objective")
    s.set_defaults(fn=cmd_submit)

    t = sub.add_parser("tap", help="consume preferences into DIR/preferences.jsonl until ^C")
    t.add_argument("--out", required=True)
    t.set_defaults(fn=cmd_tap)

    b = sub.add_parser("broker", help="run the embedded broker (Tansu) in the foreground")
    b.add_argument("--port", type=int)
    b.set_defaults(fn=cmd_broker)

    from streams.commands import register_all

    register_all(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("PREFSTREAM_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from streams.commands import CliError
    from streams.inputs import InputError
    from streams.objectives import ObjectiveError
    from streams.run import RunError

    try:
        return args.fn(args)
    except (SettingsError, InputError, ObjectiveError, RunError, CliError) as e:
        print(f"prefstream {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
