"""``prefstream objective …``: change objectives while the system runs.

apply FILE.yaml, list, show NAME [--version V], history NAME, rollback NAME --to V,
template, compare A B. Every change is validated first; an invalid spec is refused with
the reason and the live version stays.
"""
from __future__ import annotations

import asyncio
import json
import time

from streams.commands import CliError
from agents.objectives import (DEFAULT_OBJECTIVE, HISTORY, Applied, apply, changed_fields, load_objective,
                                read_all, read_store, rollback, to_yaml, validate)


def _setup(args, spec=None):
    """Settings and topics; ``spec`` is validated against the settings before the broker is asked."""
    from streams.admin import create_topics
    from streams.topics import from_settings

    settings = args.settings
    if spec is not None:
        validate(spec, settings)
    settings.brokers  # noqa: B018 - raises a SettingsError naming PREFSTREAM_BROKER when unset
    topics = from_settings(settings)
    asyncio.run(create_topics(settings, topics))
    return settings, topics


def _report(result: Applied) -> int:
    if result.status == "unchanged":
        print(f"unchanged: {result.spec.ref} is live with the same content; nothing published")
        return 0
    if result.diff:
        print(result.diff, end="" if result.diff.endswith("\n") else "\n")
    verb = "would publish" if result.status == "dry-run" else "published"
    was = f" (was {result.previous.ref})" if result.previous else " (new objective)"
    print(f"{verb} {result.spec.ref}{was}")
    return 0


def cmd_apply(args) -> int:
    spec = load_objective(args.file)
    settings, topics = _setup(args, spec)
    return _report(asyncio.run(apply(settings, topics, spec, label=args.file, dry_run=args.dry_run)))


def cmd_rollback(args) -> int:
    settings, topics = _setup(args)
    return _report(asyncio.run(rollback(settings, topics, args.name, args.to)))


def cmd_list(args) -> int:
    settings, topics = _setup(args)
    store = asyncio.run(read_store(settings, topics))
    rows = [{"name": s.name, "version": s.version, "status": s.status} for s in
            sorted(store.live.values(), key=lambda s: s.name)]
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print("no objectives; publish one with `prefstream objective apply FILE.yaml`")
    for s in sorted(store.live.values(), key=lambda s: s.name):
        r = s.routing
        routing = ", ".join(filter(None, [r.tags and f"tags={r.tags}", r.sources and f"sources={r.sources}",
                                          r.fraction is not None and f"fraction={r.fraction}"])) or "by name"
        print(f"{s.name:<24} v{s.version:<5} {s.status:<8} {routing}")
    return 0


def _versions(args):
    settings, topics = _setup(args)
    store = asyncio.run(read_store(settings, topics))
    known = store.versions.get(args.name)
    if not known:
        have = ", ".join(sorted(store.live)) or "none"
        raise CliError(f"no objective named {args.name!r} (known: {have}); see `prefstream objective list`")
    return store, known


def cmd_show(args) -> int:
    store, known = _versions(args)
    if args.version is None:
        spec = store.live.get(args.name) or known[max(known)][0]
    elif args.version in known:
        spec = known[args.version][0]
    else:
        raise CliError(f"{args.name} has no version {args.version}; known: {', '.join(map(str, sorted(known)))}")
    print(to_yaml(spec), end="")
    return 0


def cmd_history(args) -> int:
    store, known = _versions(args)
    live = store.live.get(args.name)
    rows, prev = [], None
    for version in sorted(known):
        spec, at = known[version]
        rows.append({"version": version, "status": spec.status, "published": at,
                     "live": live is not None and live.version == version,
                     "changed": changed_fields(prev, spec) if prev else []})
        prev = spec
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["published"]))
        what = ", ".join(r["changed"]) if r["changed"] else ("first version" if r is rows[0] else "no change")
        print(f"{'*' if r['live'] else ' '} v{r['version']:<5} {when}  {r['status']:<8} {what}")
    return 0


def cmd_template(args) -> int:
    print(DEFAULT_OBJECTIVE.read_text(), end="")
    return 0


def cmd_compare(args) -> int:
    from streams.commands.objectives.compare import compare, parse_side, render

    for side in (args.a, args.b):
        try:
            parse_side(side)
        except ValueError as e:
            raise CliError(str(e)) from None
    settings, topics = _setup(args)
    shorts = ["outcomes", "preferences", "preferences-shadow"]
    records = asyncio.run(read_all(settings, [getattr(topics, s) for s in shorts]))
    result = compare([v for _, v, _ in records], args.a, args.b)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


def register(sub) -> None:
    o = sub.add_parser("objective", help="change objectives while the system runs (apply, list, rollback, …)")
    osub = o.add_subparsers(dest="objective_command", required=True)

    a = osub.add_parser("apply", help="validate FILE.yaml, show the diff, publish it as the next version")
    a.add_argument("file")
    a.add_argument("--dry-run", action="store_true", help="validate and show the diff; publish nothing")
    a.set_defaults(fn=cmd_apply)

    ls = osub.add_parser("list", help="every objective's live version and status")
    ls.add_argument("--json", action="store_true", help="[{name, version, status}, …]")
    ls.set_defaults(fn=cmd_list)

    s = osub.add_parser("show", help="an objective as YAML (the live version unless --version)")
    s.add_argument("name")
    s.add_argument("--version", type=int)
    s.set_defaults(fn=cmd_show)

    h = osub.add_parser("history", help=f"every published version (from the {HISTORY} topic)")
    h.add_argument("name")
    h.add_argument("--json", action="store_true")
    h.set_defaults(fn=cmd_history)

    r = osub.add_parser("rollback", help="publish an earlier version again, as the next version")
    r.add_argument("name")
    r.add_argument("--to", type=int, required=True, help="the version to restore")
    r.set_defaults(fn=cmd_rollback)

    t = osub.add_parser("template", help="print the default objective as commented YAML")
    t.set_defaults(fn=cmd_template)

    c = osub.add_parser("compare", help="agreement between two objectives' choices on the prompts both saw")
    c.add_argument("a", help="NAME or NAME@VERSION")
    c.add_argument("b", help="NAME or NAME@VERSION")
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=cmd_compare)

