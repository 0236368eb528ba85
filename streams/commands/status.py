"""``prefstream status [--json]``: topics, consumer lag, rates, blocked stages, dead letters, objectives and
policies."""
from __future__ import annotations

import asyncio
import json
import time

from streams.commands import CliError


def register(sub) -> None:
    p = sub.add_parser("status", help="topics, consumer lag, rates over the last minute, dead letters, objectives, "
                       "policies")
    p.add_argument("--json", action="store_true", help="one JSON object (for scripts)")
    p.add_argument("--newest", type=int, default=5, help="how many of the newest dead letters to show")
    p.add_argument("--window", type=float, default=60.0, help="seconds the rates are counted over (default 60)")
    p.set_defaults(fn=cmd_status)


def cmd_status(args) -> int:
    from streams.commands.reports.status import collect
    from streams.topics import from_settings

    settings = args.settings
    settings.brokers  # noqa: B018 - raises a SettingsError naming PREFSTREAM_BROKER when unset
    from agents.pipeline import PIPELINE
    from streams.commands.reports.status import pipeline_rows

    try:
        status = asyncio.run(collect(settings, from_settings(settings), newest=args.newest, window_s=args.window))
    except OSError as e:  # unreachable broker, or one that stopped answering fetches
        raise CliError(str(e)) from None
    status["pipeline"] = pipeline_rows(status, PIPELINE, settings)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        render(status)
    return 0


def render(status: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]prefstream[/] namespace [cyan]{status['namespace']}[/] on {status['broker']}"
                  f" at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(status['at']))}")
    if status["missing_topics"]:
        console.print(f"[yellow]missing topics:[/] {', '.join(status['missing_topics'])} "
                      "(a worker or `prefstream submit` creates them)")
    t = Table(title="topics", caption=status["end_offsets"], caption_justify="left")
    for col in ("topic", "partitions", "records", "end", "reported end", f"last {status['window_s']:g}s", "per s"):
        t.add_column(col, justify="left" if col == "topic" else "right")
    for row in status["topics"]:
        t.add_row(row["short"], str(row["partitions"]), str(row["records"]), str(row["end"]),
                  str(row["reported_end"]), str(row["last_minute"]), f"{row['per_s']:.2f}")
    console.print(t)
    g = Table(title="consumer groups (lag = end - committed)")
    for col in ("group", "state", "members", "topic", "committed", "end", "lag"):
        g.add_column(col)
    for grp in status["groups"]:
        for topic, row in grp["topics"].items():
            note = f" ({row['uncommitted_partitions']} partitions never committed)" if row["uncommitted_partitions"] else ""
            g.add_row(grp["group"], str(grp["state"]), str(grp["members"]), topic.rsplit(".", 1)[-1],
                      str(row["committed"]), str(row["end"]), f"{row['lag']}{note}")
    console.print(g if status["groups"] else "[dim]no consumer group has committed offsets here yet[/]")
    p = Table(title="pipeline (`prefstream pipeline`): each stage's input lag and members")
    for col in ("stage", "worker", "reads", "writes", "members", "lag", "blocked"):
        p.add_column(col)
    for row in status["pipeline"]:
        p.add_row(row["stage"], row["worker"], row["input"], row["outputs"], str(row["members"] or "-"),
                  "-" if row["lag"] is None else str(row["lag"]), "[red]yes[/]" if row["blocked"] else "no")
    console.print(p)
    _stages(console, status["stages"])
    _dead_letters(console, status["deadletters"])
    o = Table(title="objectives (newest version of each)")
    for col in ("objective", "status", "generators", "evaluators"):
        o.add_column(col)
    for obj in status["objectives"]:
        o.add_row(obj["ref"], obj["status"], ", ".join(obj["generators"]), ", ".join(obj["evaluators"]))
    console.print(o if status["objectives"] else "[yellow]no objective published[/]")
    from streams.commands.reports.policies import render as render_policies

    render_policies(console, status["policies"])


def _dead_letters(console, dl: dict) -> None:
    from rich.table import Table

    console.print(f"[bold]dead letters:[/] {dl['count']}"
                  + (" — " + ", ".join(f"{k}: {v}" for k, v in dl["by_reason"].items()) if dl["by_reason"] else ""))
    if not dl["newest"]:
        return
    t = Table(title="newest dead letters (prefstream deadletters show REF)")
    for col in ("ref", "when", "stage", "error", "from", "reason"):
        t.add_column(col)
    for d in dl["newest"]:
        when = time.strftime("%H:%M:%S", time.localtime(d["created_at"])) if d["created_at"] else "?"
        t.add_row(d["ref"], when, d["stage"], d["error_type"], f"{d['topic']}[{d['partition']}]@{d['offset']}",
                  d["error"][:80])
    console.print(t)


def _stages(console, stages: dict) -> None:
    from rich.table import Table

    if not stages["blocked"]:
        console.print(f"[bold]stages:[/] {stages['running']} running in {stages['workers']} live worker(s), none blocked")
        return
    t = Table(title="[red]blocked stages[/] (their input waits in the topic; nothing is dead-lettered)")
    for col in ("stage", "worker", "reason", "for", "detail", "fix"):
        t.add_column(col)
    for b in stages["blocked"]:
        t.add_row(b["stage"], b["worker"], b["reason"] or "?", f"{b['for_s']:.0f}s" if b["for_s"] else "?",
                  b["detail"][:120], b["fix"])
    console.print(t)
