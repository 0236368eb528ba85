"""``prefstream report DIR|--topic [--objective NAME] --out report.html [--json [FILE]]``.

A data report people look at: one self-contained HTML page (no network needed to open it)
with record counts by kind and objective version over time, score and margin histograms
per evaluator, the chosen-vs-rejected length scatter, swap consistency and tie rate over
time, evaluator agreement, verifier pass rates per source, the top dead-letter reasons
and a sample of pairs. ``--json`` writes the same figures as JSON (to stdout, or FILE).
"""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from streams.commands import CliError


def register(sub) -> None:
    p = sub.add_parser("report", help="a self-contained HTML data report of a run directory or of the topics")
    p.add_argument("dir", nargs="?", help="the --out DIR of `prefstream run`")
    p.add_argument("--topic", action="store_true",
                   help="read the judgments, preferences, outcomes and deadletters topics at PREFSTREAM_BROKER instead")
    p.add_argument("--objective", help="only this objective: NAME (every version) or NAME@VERSION")
    p.add_argument("--out", help="write the HTML page here (report.html)")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="write the figures as JSON to FILE (no FILE: stdout)")
    p.add_argument("--samples", type=int, default=8, help="pairs shown in full (default 8)")
    p.add_argument("--bins", type=int, default=12, help="time bins of the over-time charts (default 12)")
    p.set_defaults(fn=cmd_report)


def cmd_report(args) -> int:
    from streams.commands.reports.summary import ReportError, figures

    if bool(args.dir) == bool(args.topic):
        raise CliError("give a run directory (prefstream report DIR) or --topic, one of the two")
    if not args.out and not args.json:
        raise CliError("say where the report goes: --out report.html and/or --json [FILE]")
    if args.samples < 0 or args.bins < 1:
        raise CliError("--samples must be >= 0 and --bins >= 1")
    try:
        src = _from_topics(args) if args.topic else _from_dir(args.dir)
        figs = figures(src, args.objective, samples=args.samples, bins=args.bins)
    except ReportError as e:
        raise CliError(str(e)) from None
    if args.objective and not (figs["totals"]["judged_sets"] or figs["totals"]["records"]
                               or figs["totals"]["outcomes"]):
        raise CliError(f"nothing under objective {args.objective!r} in {src.origin}; "
                       "`prefstream objective list` names the objectives")
    if args.out:
        from streams.commands.reports.html import render

        Path(args.out).write_text(render(figs), encoding="utf-8")
        print(f"wrote {args.out} ({figs['totals']['records']} records, {figs['totals']['judged_sets']} judged sets)",
              file=sys.stderr)
    if args.json:
        text = json.dumps(figs, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0


def _from_dir(path: str):
    from streams.commands.reports.summary import load_dir

    return load_dir(Path(path))


def _from_topics(args):
    from aiokafka.errors import KafkaConnectionError

    from streams.commands.reports.summary import load_topics
    from streams.topics import from_settings

    settings = args.settings
    settings.brokers  # noqa: B018 - raises a SettingsError naming PREFSTREAM_BROKER when unset
    try:
        return asyncio.run(load_topics(settings, from_settings(settings)))
    except (OSError, KafkaConnectionError) as e:
        raise CliError(f"cannot reach the broker at {settings.broker}: {e}; check PREFSTREAM_BROKER") from None
