"""The ``prefstream`` command line."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

import msgspec

from streams.settings import Settings, SettingsError, load

logger = logging.getLogger("prefstream")
FORMAT_NAMES = "trl-dpo, trl-kto, trl-reward, openrlhf, ranking, scalar"  # streams.commands.tap.formats.FORMATS


def stop_signal():
    """An event set by SIGINT or SIGTERM; install it before announcing readiness. (Handlers,
    not a blocked mask, so child processes keep their default signal handling.)"""
    import threading

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def exit_on_sigterm() -> None:
    """SIGTERM raises SystemExit, as ^C raises KeyboardInterrupt, so a command's ``finally``
    stops the workers and the embedded broker it started (by default SIGTERM ends the process
    at once and leaves them running)."""
    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def wait_for(stop) -> None:
    while not stop.wait(3600):
        pass


def _settings(args) -> Settings:
    """The one Settings object ``main`` loaded for this command (from ``--config`` and
    ``PREFSTREAM_*``, or whole from standard input for a worker that ``run``/``up`` started)."""
    return args.settings


def _with_flags(settings: Settings, args) -> Settings:
    """``run`` and ``up``: their --metrics-port and --workers over the settings."""
    if args.metrics_port is not None:
        settings = settings.replace(metrics_port=args.metrics_port)
    if args.workers is not None:
        settings = settings.replace(workers=args.workers)
    return settings


def cmd_broker(args) -> int:
    from streams.broker import EmbeddedBroker

    stop = stop_signal()
    with EmbeddedBroker(port=args.port) as b:
        print(b.address, flush=True)
        wait_for(stop)
    return 0


def cmd_worker(args) -> int:
    import faust

    from agents.pipeline import PIPELINE
    from streams.app import build_app

    settings = _settings(args)
    settings.brokers  # noqa: B018 - raises a SettingsError naming PREFSTREAM_BROKER when unset
    agents = tuple(a.strip() for a in args.agents.split(",")) if args.agents else PIPELINE.workers
    if args.metrics_port is not None:
        settings = settings.replace(metrics_port=args.metrics_port)
    from streams.admin import create_topics
    from streams.topics import from_settings

    asyncio.run(create_topics(settings, from_settings(settings)))
    app = build_app(settings, PIPELINE, agents)
    from streams.logs import dict_config

    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True,
                          logging_config=dict_config(settings.log_level, settings.log_format))
    import gc

    gc.freeze()  # the start-up heap (modules, the app) leaves the collector's scans
    worker.execute_from_commandline()
    return 0


def cmd_submit(args) -> int:
    from streams.admin import create_topics, producer
    from streams.commands.serving.inputs import read_prompts
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


def _format(name: str | None, style: str):
    from streams.commands import CliError
    from streams.commands.tap.formats import FormatError, get

    try:
        return None if name is None else get(name, style)
    except FormatError as e:
        raise CliError(str(e)) from None


def _lag(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: K is a whole number of versions, 0 or more")
    return int(text)


def cmd_tap(args) -> int:
    from streams.commands.tap.follow import Rotation, tap
    from streams.topics import from_settings

    settings = _settings(args)
    settings.brokers  # noqa: B018
    fmt = _format(args.format, args.style)
    rotation = Rotation(max_bytes=int(args.rotate_mb * (1 << 20)), max_seconds=args.rotate_s)
    stop = asyncio.Event()
    stats: dict = {}

    async def go() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await tap(settings, from_settings(settings), args.out, stop, fmt=fmt, rotation=rotation,
                         max_policy_lag=args.max_policy_lag, stats=stats, metrics=metrics)

    from streams.metrics import served

    metrics = served(args.metrics_port, settings.metrics_host)

    from streams.commands import CliError
    from streams.commands.tap.formats import FormatError

    try:
        n = asyncio.run(go())
    except FormatError as e:  # the folder already holds another format
        raise CliError(str(e)) from None
    where = Path(args.out) / ("preferences.jsonl" if fmt is None else "")
    print(f"wrote {n} new records to {where}")
    if args.max_policy_lag is not None:
        print(f"skipped {stats.get('skipped_stale', 0)} records more than {args.max_policy_lag} versions behind their "
              f"policy's newest: {json.dumps(stats.get('skipped_by_policy', {}))}")
    return 0


def _objective(args):
    from agents.objectives import load_objective

    spec = load_objective(args.objective)
    if getattr(args, "candidates", None):
        spec = msgspec.structs.replace(spec, synthesis=msgspec.structs.replace(spec.synthesis,
                                                                               candidates=args.candidates))
    return spec


def cmd_run(args) -> int:
    from streams.commands.serving.inputs import read_prompts
    from streams.commands.run import run

    settings = _with_flags(_settings(args), args)
    spec = _objective(args)
    prompts = list(read_prompts(args.input, args.limit))
    for name in args.format or []:
        _format(name, args.style)
    from streams.commands import CliError
    from streams.commands.tap.formats import FormatError

    exit_on_sigterm()
    try:
        result = run(settings, prompts, spec, Path(args.out), progress=not args.quiet,
                     formats=args.format or [], style=args.style)
    except FormatError as e:  # DIR/<format>/ holds another style, or another writer has it
        raise CliError(str(e)) from None
    print(json.dumps(result, indent=2))
    return 0


def cmd_up(args) -> int:
    """The whole system as a service on the embedded broker: broker + the workers, until ^C."""
    from streams.broker import EmbeddedBroker
    from streams.commands.run import prepare_models, publish_objective, start_workers, stop_processes
    from streams.admin import create_topics
    from streams.topics import from_settings

    settings = _with_flags(_settings(args), args)
    out = Path(settings.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    stop = stop_signal()
    broker = None if settings.broker else EmbeddedBroker(port=args.port, log_path=out / "broker.log").start()
    if broker:
        settings = settings.replace(broker=broker.address)
    workers = []
    try:
        topics = from_settings(settings)
        asyncio.run(create_topics(settings, topics))
        spec = _objective(args)
        asyncio.run(publish_objective(settings, topics, spec))
        prepare_models(settings, spec)
        workers = start_workers(settings, out)
        print(f"prefstream up: broker {settings.broker}, namespace {settings.namespace}; "
              f"submit with PREFSTREAM_BROKER={settings.broker} prefstream submit FILE; ^C stops", flush=True)
        wait_for(stop)
    finally:
        stop_processes(workers)
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
    r.add_argument("--metrics-port", type=int, help="the first worker serves /metrics on PORT, worker i on PORT+i (default 9464; 0 = off)")
    r.add_argument("--workers", type=int, help="worker processes in one group, each with every agent and its own "
                   "model (default 1, or PREFSTREAM_WORKERS; at most the partitions)")
    r.add_argument("--format", action="append", help=f"also write this training format to DIR/<format>/ as JSONL and "
                   f"Parquet (repeatable): {FORMAT_NAMES}")
    r.add_argument("--style", default="conversational", choices=["conversational", "standard"],
                   help="TRL's conversational (chat turns) or standard (plain text) rows")
    r.set_defaults(fn=cmd_run)

    u = sub.add_parser("up", help="the whole system as a long-running service on the embedded broker")
    u.add_argument("--objective", help="objective YAML to publish at start")
    u.add_argument("--port", type=int, help="broker port (default: a free one)")
    u.add_argument("--metrics-port", type=int, help="the first worker serves /metrics on PORT, worker i on PORT+i (default 9464; 0 = off)")
    u.add_argument("--workers", type=int, help="worker processes in one group, each with every agent and its own "
                   "model (default 1, or PREFSTREAM_WORKERS; at most the partitions)")
    u.set_defaults(fn=cmd_up)

    w = sub.add_parser("worker", help="run agents against PREFSTREAM_BROKER")
    w.add_argument("--agents", help="comma-separated subset of the pipeline's workers "
                   "(curate,synthesize,evaluate,instantiate: `prefstream pipeline`)")
    w.add_argument("--metrics-port", type=int, help="serve /metrics on PORT (default 9464; 0 = off)")
    w.add_argument("--settings-stdin", action="store_true",
                   help="read the whole settings as JSON from standard input (how run and up start workers)")
    w.set_defaults(fn=cmd_worker)

    s = sub.add_parser("submit", help="produce prompts from a JSONL file")
    s.add_argument("file")
    s.add_argument("--limit", type=int)
    s.add_argument("--objective", help="route every prompt to this objective")
    s.set_defaults(fn=cmd_submit)

    t = sub.add_parser("tap", help="consume preferences into DIR until ^C (idempotent across restarts)")
    t.add_argument("--out", required=True)
    t.add_argument("--format", help=f"one training format as JSONL + Parquet shards and a dataset card: {FORMAT_NAMES} "
                   "(default: pairs into DIR/preferences.jsonl)")
    t.add_argument("--style", default="conversational", choices=["conversational", "standard"],
                   help="TRL's conversational (chat turns) or standard (plain text) rows")
    t.add_argument("--rotate-mb", type=float, default=64.0, help="commit a shard at this many MB of JSONL")
    t.add_argument("--rotate-s", type=float, default=60.0, help="commit a shard this many seconds after its first row")
    t.add_argument("--max-policy-lag", type=_lag, metavar="K",
                   help="skip (and count) records whose policy is more than K versions behind its newest published "
                        "version (0: the newest only); records with no policy are always kept")
    t.add_argument("--metrics-port", type=int, default=0, metavar="P",
                   help="serve /metrics on P (prefstream_policy_stale_skipped_total; default 0 = off)")
    t.set_defaults(fn=cmd_tap)

    b = sub.add_parser("broker", help="run the embedded broker (Tansu) in the foreground")
    b.add_argument("--port", type=int)
    b.set_defaults(fn=cmd_broker)

    from streams.commands import register_all

    register_all(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from streams.logs import configure
    from streams.settings import loads

    try:
        if getattr(args, "settings_stdin", False):
            args.settings = loads(sys.stdin.buffer.read())
        else:
            args.settings = load(config_file=args.config)
    except (SettingsError, ValueError) as e:
        print(f"prefstream {args.command}: {e}", file=sys.stderr)
        return 2
    configure(args.settings.log_level, args.settings.log_format)
    from streams.commands import CliError
    from streams.commands.serving.inputs import InputError
    from agents.objectives import ObjectiveError
    from streams.commands.run import RunError

    try:
        return args.fn(args)
    except (SettingsError, InputError, ObjectiveError, RunError, CliError) as e:
        print(f"prefstream {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
